#![allow(missing_docs, clippy::all, clippy::pedantic)]
use boundary_webhook::review;
use std::time::Instant;
fn main() {
    let body = std::fs::read("/tmp/review.json").unwrap();
    let n = 20000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(review::parse(std::hint::black_box(&body)).unwrap());
    }
    println!(
        "parse: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let req = review::parse(&body).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let p: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(req.object.clone().unwrap()).unwrap();
        std::hint::black_box(p);
    }
    println!(
        "clone+from_value Pod: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(req.object.clone());
    }
    println!(
        "clone Value: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        let p: k8s_openapi::api::core::v1::Pod =
            serde_json::from_slice(&serde_json::to_vec(&req.object).unwrap()).unwrap();
        std::hint::black_box(p);
    }
    println!(
        "Value->bytes->Pod: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        let r = review::AdmissionResponse::allow("x");
        std::hint::black_box(serde_json::to_vec(&r.into_review()).unwrap());
    }
    println!(
        "response: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
