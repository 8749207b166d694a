//! `SigV4` re-signing against an independent verifier: `sigv4_verifier.py` (botocore's signer
//! for the request signature, a hmac/hashlib recomputation for aws-chunked chunk and trailer
//! signatures) on loopback, holding the REAL keys. Each test signs a request as an agent's SDK
//! would (aws-sigv4, placeholder keys), re-signs it with `AwsSigner::resign`, sends it with hyper
//! and expects 200; the verifier answers 403 to the placeholder-signed request itself, to a
//! tampered one and to one signed with a wrong secret, so the checks can fail.
//!
//! Needs Debian's `python3-botocore` (tests/scripts/setup.sh installs it).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use boundary_api::credentials::{AwsKeys, placeholder, secret_placeholder};
use boundary_proxy::sigv4::{AwsSigner, BUFFER_LIMIT, SigV4Error};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Debian's python3, where `python3-botocore` is installed.
const PYTHON: &str = "/usr/bin/python3";
const VERIFIER: &str = include_str!("sigv4_verifier.py");
const NONCE: &str = "abcdefghijklmnop";

fn real_keys(token: Option<&str>) -> AwsKeys {
    AwsKeys {
        access_key_id: "AKIAREALKEY000000001".into(),
        secret_access_key: "real/Secret+Access/Key0000000000000000001".into(),
        session_token: token.map(str::to_owned),
    }
}

/// The keys an agent holds: the placeholders the webhook put in its env.
fn placeholder_keys() -> AwsKeys {
    AwsKeys {
        access_key_id: placeholder(NONCE, "aws"),
        secret_access_key: secret_placeholder(NONCE, "aws"),
        session_token: None,
    }
}

/// The verifier, killed when dropped.
struct Verifier {
    port: u16,
    _child: Option<tokio::process::Child>,
}

impl Verifier {
    async fn start(keys: &AwsKeys) -> Verifier {
        let botocore = std::process::Command::new(PYTHON)
            .args(["-c", "import botocore"])
            .status();
        assert!(
            botocore.is_ok_and(|s| s.success()),
            "{PYTHON} cannot import botocore: install python3-botocore (tests/scripts/setup.sh)"
        );
        let mut child = tokio::process::Command::new(PYTHON)
            .args(["-c", VERIFIER])
            .arg(&keys.access_key_id)
            .arg(&keys.secret_access_key)
            .arg(keys.session_token.as_deref().unwrap_or(""))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the verifier");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .await
            .expect("the verifier's port line");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the verifier printed {line:?}"));
        Verifier {
            port,
            _child: Some(child),
        }
    }

    /// Sends `request` and returns the status and the verifier's JSON.
    async fn send<B>(&self, request: Request<B>) -> (u16, Value)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connecting to the verifier");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let response: Response<_> = sender
            .send_request(request)
            .await
            .expect("the verifier's response");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).expect("JSON"))
    }
}

/// How the client's SDK signs.
#[derive(Clone, Copy)]
enum Sdk {
    /// Most services: body hashed, no x-amz-content-sha256, path normalised.
    Default,
    /// S3: x-amz-content-sha256 set and signed, path as is.
    S3,
}

/// Signs `request` as an AWS SDK would with `keys` at `time`; returns the seed signature.
fn sdk_sign<B>(
    request: &mut Request<B>,
    keys: &AwsKeys,
    region: &str,
    service: &str,
    body: SignableBody<'_>,
    sdk: Sdk,
    time: SystemTime,
) -> String {
    let identity = identity_of(keys);
    let mut settings = SigningSettings::default();
    if let Sdk::S3 = sdk {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.uri().to_string(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        body,
    )
    .unwrap();
    let (instructions, seed) = aws_sigv4::http_request::sign(signable, &params)
        .unwrap()
        .into_parts();
    instructions.apply_to_request_http1x(request);
    seed
}

fn identity_of(keys: &AwsKeys) -> Identity {
    Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        keys.session_token.clone(),
        None,
        "test",
    )
    .into()
}

/// A request body delivered in the given frames.
struct Frames(VecDeque<Bytes>, u64);

impl Frames {
    fn new(data: &[u8], frame: usize) -> Frames {
        let frames: VecDeque<Bytes> = data.chunks(frame).map(Bytes::copy_from_slice).collect();
        Frames(frames, data.len() as u64)
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.1)
    }
}

/// Re-signs `request` with `signer` and rebuilds it with the body to send.
async fn resign(
    signer: &AwsSigner,
    request: Request<Frames>,
) -> Result<Request<boundary_proxy::sigv4::ResignedBody<Frames>>, SigV4Error> {
    let (mut parts, body) = request.into_parts();
    let body = signer.resign(&mut parts, body).await?;
    Ok(Request::from_parts(parts, body))
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .fold(String::new(), |s, b| s + &format!("{b:02x}"))
}

/// A Bedrock `InvokeModel` as the SDK sends it: JSON, no x-amz-content-sha256.
fn bedrock_request(body: &[u8]) -> Request<Frames> {
    let mut request = Request::post("/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke")
        .header("host", "bedrock-runtime.us-east-1.amazonaws.com")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("content-length", body.len())
        .header("user-agent", "aws-sdk-rust/1.0 agent")
        .body(Frames::new(body, 1000))
        .unwrap();
    sdk_sign(
        &mut request,
        &placeholder_keys(),
        "us-east-1",
        "bedrock",
        SignableBody::Bytes(body),
        Sdk::Default,
        SystemTime::now(),
    );
    request
}

const BEDROCK_BODY: &[u8] =
    br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn bedrock_json_post_without_content_sha256_is_hashed_and_resigned() {
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;
    let request = resign(&AwsSigner::from_keys(keys), bedrock_request(BEDROCK_BODY))
        .await
        .unwrap();
    assert!(request.headers().get("x-amz-content-sha256").is_none());
    assert_eq!(request.headers()["user-agent"], "aws-sdk-rust/1.0 agent");
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["service"], "bedrock");
    assert_eq!(reply["body_sha256"], hex_sha256(BEDROCK_BODY));
    assert_eq!(
        reply["signed_headers"],
        serde_json::json!([
            "accept",
            "content-length",
            "content-type",
            "host",
            "x-amz-date"
        ])
    );
}

/// An HTTP/2 request has no Host header: its :authority is what the client signed as host.
#[tokio::test]
async fn http2_request_signs_its_authority_as_host() {
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;
    let (mut parts, body) = bedrock_request(BEDROCK_BODY).into_parts();
    let host = parts.headers.remove("host").unwrap();
    parts.uri = format!("https://{}{}", host.to_str().unwrap(), parts.uri)
        .parse()
        .unwrap();
    parts.version = http::Version::HTTP_2;
    let body = AwsSigner::from_keys(keys)
        .resign(&mut parts, body)
        .await
        .unwrap();
    assert!(!parts.headers.contains_key("host"));
    // Sent as HTTP/1.1 to the verifier, as the proxy may forward it: Host from the authority.
    parts.headers.insert("host", host);
    parts.uri = parts
        .uri
        .path_and_query()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    parts.version = http::Version::HTTP_11;
    let (status, reply) = verifier.send(Request::from_parts(parts, body)).await;
    assert_eq!(status, 200, "{reply}");
}

/// An S3 `PutObject` signed as the SDK does, with `content_sha256` as the payload mode.
fn s3_put(body: SignableBody<'_>, frames: Frames, time: SystemTime) -> (Request<Frames>, String) {
    let mut request = Request::put("/my-bucket/dir/a%20file+%C3%A9.txt?x-id=PutObject")
        .header("host", "s3.eu-west-1.amazonaws.com")
        .header("content-type", "text/plain")
        .header("content-length", frames.1)
        .body(frames)
        .unwrap();
    let seed = sdk_sign(
        &mut request,
        &placeholder_keys(),
        "eu-west-1",
        "s3",
        body,
        Sdk::S3,
        time,
    );
    (request, seed)
}

#[tokio::test]
async fn s3_put_with_precomputed_hash_is_resigned() {
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;
    let data = b"hello S3\n".repeat(1000);
    let hash = hex_sha256(&data);
    let (request, _) = s3_put(
        SignableBody::Precomputed(hash.clone()),
        Frames::new(&data, 4096),
        SystemTime::now(),
    );
    assert_eq!(request.headers()["x-amz-content-sha256"], hash.as_str());
    let request = resign(&AwsSigner::from_keys(keys), request).await.unwrap();
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["body_sha256"], hash);
}

#[tokio::test]
async fn unsigned_payload_is_resigned_and_the_body_passes_untouched() {
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;
    let data = b"not hashed".repeat(100);
    let (request, _) = s3_put(
        SignableBody::UnsignedPayload,
        Frames::new(&data, 333),
        SystemTime::now(),
    );
    let request = resign(&AwsSigner::from_keys(keys), request).await.unwrap();
    assert_eq!(
        request.headers()["x-amz-content-sha256"],
        "UNSIGNED-PAYLOAD"
    );
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["body_sha256"], hex_sha256(&data));
}

/// `data` aws-chunked in `chunk`-byte chunks signed from `seed` (and a signed trailer).
fn aws_chunked(
    data: &[u8],
    chunk: usize,
    seed: &str,
    keys: &AwsKeys,
    time: SystemTime,
    trailer: Option<(&str, &str)>,
) -> Vec<u8> {
    let identity = identity_of(keys);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("s3")
        .time(time)
        .settings(())
        .build()
        .unwrap();
    let mut previous = seed.to_owned();
    let mut out = Vec::new();
    for piece in data.chunks(chunk).chain([&[][..]]) {
        let bytes = Bytes::copy_from_slice(piece);
        previous = v4::sign_chunk(&bytes, &previous, &params)
            .unwrap()
            .into_parts()
            .1;
        out.extend_from_slice(
            format!("{:X};chunk-signature={previous}\r\n", piece.len()).as_bytes(),
        );
        if !piece.is_empty() {
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some((name, value)) = trailer {
        let mut headers = aws_smithy_runtime_api::http::Headers::new();
        headers.insert(name.to_owned(), value.to_owned());
        let signature = v4::sign_trailer(&headers, &previous, &params)
            .unwrap()
            .signature()
            .to_owned();
        out.extend_from_slice(
            format!("{name}:{value}\r\nx-amz-trailer-signature:{signature}\r\n").as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// An S3 streaming upload (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`) of `data` signed
/// with placeholder keys, its body in frames that split chunk headers and data.
fn chunked_upload_request(data: &[u8], trailer: Option<(&str, &str)>) -> Request<Frames> {
    let time = SystemTime::now();
    let keys = placeholder_keys();
    // The encoded length is the same whatever the signatures: encode once to know it.
    let length = aws_chunked(data, 65536, &"0".repeat(64), &keys, time, trailer).len();
    let mut request = Request::put("/my-bucket/big.bin")
        .header("host", "my-bucket.s3.eu-west-1.amazonaws.com")
        .header("content-encoding", "aws-chunked")
        .header("x-amz-decoded-content-length", data.len())
        .header("content-length", length)
        .body(())
        .unwrap();
    let body = match trailer {
        Some((name, _)) => {
            let name = HeaderValue::from_str(name).unwrap();
            request.headers_mut().insert("x-amz-trailer", name);
            SignableBody::StreamingSignedPayloadTrailer
        }
        None => SignableBody::Precomputed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into()),
    };
    let seed = sdk_sign(&mut request, &keys, "eu-west-1", "s3", body, Sdk::S3, time);
    let encoded = aws_chunked(data, 65536, &seed, &keys, time, trailer);
    let (parts, ()) = request.into_parts();
    Request::from_parts(parts, Frames::new(&encoded, 7001))
}

/// A chunked upload refused as the agent signed it, accepted re-signed; the verifier's answer.
async fn chunked_upload(trailer: Option<(&str, &str)>) -> Value {
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    let (status, reply) = verifier.send(chunked_upload_request(&data, trailer)).await;
    assert_eq!(
        status, 403,
        "the placeholder-signed upload must be refused: {reply}"
    );

    let request = chunked_upload_request(&data, trailer);
    let request = resign(&AwsSigner::from_keys(keys), request).await.unwrap();
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["body_sha256"], hex_sha256(&data));
    // 200000 bytes in 64 KiB chunks: 4 data chunks and the final empty one.
    assert_eq!(reply["chunks"], 5);
    reply
}

#[tokio::test]
async fn aws_chunked_upload_has_every_chunk_resigned() {
    let reply = chunked_upload(None).await;
    assert_eq!(reply["trailers"], serde_json::json!({}));
}

#[tokio::test]
async fn aws_chunked_upload_with_a_signed_trailer_is_resigned() {
    let reply = chunked_upload(Some(("x-amz-checksum-crc32", "sOO8/Q=="))).await;
    assert_eq!(reply["trailers"]["x-amz-checksum-crc32"], "sOO8/Q==");
}

#[tokio::test]
async fn real_session_token_is_added_and_a_placeholder_token_replaced() {
    let keys = real_keys(Some("real-session-token/abc+def=="));
    let verifier = Verifier::start(&keys).await;
    // The agent's SDK signed with a (placeholder) session token of its own.
    let mut agent = placeholder_keys();
    agent.session_token = Some(placeholder(NONCE, "aws-token"));
    let mut request = Request::post("/")
        .header("host", "sts.amazonaws.com")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Frames::new(
            b"Action=GetCallerIdentity&Version=2011-06-15",
            100,
        ))
        .unwrap();
    sdk_sign(
        &mut request,
        &agent,
        "us-east-1",
        "sts",
        SignableBody::Bytes(b"Action=GetCallerIdentity&Version=2011-06-15"),
        Sdk::Default,
        SystemTime::now(),
    );
    assert!(request.headers().contains_key("x-amz-security-token"));
    let request = resign(&AwsSigner::from_keys(keys), request).await.unwrap();
    assert_eq!(
        request.headers()["x-amz-security-token"],
        "real-session-token/abc+def=="
    );
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 200, "{reply}");

    // Real keys without a token: the placeholder token is removed, not forwarded.
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;
    let mut request = bedrock_request(BEDROCK_BODY);
    request.headers_mut().insert(
        "x-amz-security-token",
        HeaderValue::from_str(&placeholder(NONCE, "aws-token")).unwrap(),
    );
    let request = resign(&AwsSigner::from_keys(keys), request).await.unwrap();
    assert!(!request.headers().contains_key("x-amz-security-token"));
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn verifier_refuses_placeholder_signed_tampered_and_wrongly_keyed_requests() {
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;

    let (status, reply) = verifier.send(bedrock_request(BEDROCK_BODY)).await;
    assert_eq!(status, 403);
    assert_eq!(reply["error"], "the access key id is not the real one");

    let mut request = resign(
        &AwsSigner::from_keys(keys.clone()),
        bedrock_request(BEDROCK_BODY),
    )
    .await
    .unwrap();
    request
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 403);
    assert_eq!(reply["error"], "signature does not match");

    let wrong = AwsKeys {
        secret_access_key: "not-the-real-secret".into(),
        ..keys
    };
    let request = resign(&AwsSigner::from_keys(wrong), bedrock_request(BEDROCK_BODY))
        .await
        .unwrap();
    let (status, reply) = verifier.send(request).await;
    assert_eq!(status, 403);
    assert_eq!(reply["error"], "signature does not match");
}

#[tokio::test]
async fn requests_that_cannot_be_resigned_are_errors() {
    let signer = AwsSigner::from_keys(real_keys(None));
    let plain = |uri: &str| {
        Request::get(uri)
            .header("host", "s3.amazonaws.com")
            .body(Frames::new(b"", 1))
            .unwrap()
    };

    let e = resign(&signer, plain("/bucket/key")).await.unwrap_err();
    assert!(
        matches!(e, SigV4Error::NotSigned { presigned: false }),
        "{e}"
    );

    let presigned = plain(
        "/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=abc",
    );
    let e = resign(&signer, presigned).await.unwrap_err();
    assert!(
        matches!(e, SigV4Error::NotSigned { presigned: true }),
        "{e}"
    );
    assert!(e.to_string().contains("presigned URL"), "{e}");

    let mut bad = bedrock_request(BEDROCK_BODY);
    bad.headers_mut().insert(
        "authorization",
        HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=x"),
    );
    let e = resign(&signer, bad).await.unwrap_err();
    assert!(matches!(e, SigV4Error::Authorization(_)), "{e}");

    let mut sigv4a = bedrock_request(BEDROCK_BODY);
    sigv4a.headers_mut().insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"),
    );
    let e = resign(&signer, sigv4a).await.unwrap_err();
    assert!(matches!(e, SigV4Error::ContentSha256), "{e}");

    let mut missing = bedrock_request(BEDROCK_BODY);
    missing.headers_mut().remove("accept");
    let e = resign(&signer, missing).await.unwrap_err();
    assert!(
        matches!(&e, SigV4Error::MissingSignedHeader(h) if h == "accept"),
        "{e}"
    );

    // Too large to hash: refused by its Content-Length before reading, or while reading.
    let mut declared = bedrock_request(BEDROCK_BODY);
    declared
        .headers_mut()
        .insert("content-length", HeaderValue::from(BUFFER_LIMIT + 1));
    let e = resign(&signer, declared).await.unwrap_err();
    assert!(matches!(e, SigV4Error::BodyTooLarge { .. }), "{e}");
    let mut streamed = bedrock_request(BEDROCK_BODY);
    streamed.headers_mut().remove("content-length");
    *streamed.body_mut() = Frames(
        std::iter::repeat_n(Bytes::from(vec![b'x'; 1 << 20]), 33).collect(),
        0,
    );
    let e = resign(&signer, streamed).await.unwrap_err();
    assert!(matches!(e, SigV4Error::BodyTooLarge { .. }), "{e}");
    assert!(!e.to_string().contains("AKIA"));
}

#[tokio::test]
async fn malformed_aws_chunked_bodies_fail_the_upload() {
    let signer = AwsSigner::from_keys(real_keys(None));
    let cases: [&[u8]; 5] = [
        b"garbage without framing\r\n",
        b"10;chunk-signature=abc\r\n",
        b"4;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\nabcdefgh\r\n",
        b"4;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\nab",
        b"0;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\nx-amz-checksum-crc32:AAAA\r\n\r\n",
    ];
    for case in cases {
        let time = SystemTime::now();
        let (request, _) = s3_put(
            SignableBody::Precomputed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into()),
            Frames::new(case, 3),
            time,
        );
        let request = resign(&signer, request).await.unwrap();
        let e = request.into_body().collect().await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("aws-chunked"),
            "{:?}: {text}",
            String::from_utf8_lossy(case)
        );
    }
}

/// Env of a child process with nothing of this machine's AWS set-up.
fn isolated_env(command: &mut tokio::process::Command, home: &std::path::Path) {
    command
        .env_clear()
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// Runs [`default_chain_child`] in a child process with `configure`'s env and expects it to
/// have re-signed four requests the verifier accepted.
async fn run_child(verifier: &Verifier, configure: impl FnOnce(&mut tokio::process::Command)) {
    let text = child_output(verifier, configure).await;
    assert!(text.contains("re-signed with the default chain"), "{text}");
}

/// The output of a successful [`default_chain_child`] run.
async fn child_output(
    verifier: &Verifier,
    configure: impl FnOnce(&mut tokio::process::Command),
) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command.args([
        "default_chain_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    isolated_env(&mut command, home.path());
    command.env("SIGV4_CHILD_VERIFIER_PORT", verifier.port.to_string());
    configure(&mut command);
    let output = command.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    text
}

/// Only does something as the child of the default-chain tests (its env names the verifier):
/// the default chain needs its env set, which a test cannot do in its own process without
/// `unsafe`.
#[tokio::test]
async fn default_chain_child() {
    let Ok(port) = std::env::var("SIGV4_CHILD_VERIFIER_PORT") else {
        return;
    };
    let verifier = Verifier {
        port: port.parse().unwrap(),
        _child: None,
    };
    let signer = AwsSigner::from_default_chain().await;
    if std::env::var_os("SIGV4_CHILD_EXPECT_NO_IDENTITY").is_some() {
        let e = signer.check().await.unwrap_err();
        let e2 = resign(&signer, bedrock_request(BEDROCK_BODY))
            .await
            .unwrap_err();
        assert!(matches!(e2, SigV4Error::Credentials(_)), "{e2}");
        println!("refused: {e}");
        return;
    }
    signer.check().await.unwrap();
    for _ in 0..4 {
        let request = resign(&signer, bedrock_request(BEDROCK_BODY))
            .await
            .unwrap();
        let (status, reply) = verifier.send(request).await;
        assert_eq!(status, 200, "{reply}");
    }
    println!("re-signed with the default chain");
}

#[tokio::test]
async fn default_chain_takes_keys_from_the_environment() {
    let keys = real_keys(None);
    let verifier = Verifier::start(&keys).await;
    run_child(&verifier, |c| {
        c.env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key);
    })
    .await;
}

#[tokio::test]
async fn default_chain_without_an_identity_is_a_clear_error() {
    let verifier = Verifier::start(&real_keys(None)).await;
    let text = child_output(&verifier, |c| {
        c.env("SIGV4_CHILD_EXPECT_NO_IDENTITY", "1");
    })
    .await;
    assert!(text.contains("refused: no AWS credentials: "), "{text}");
}

const POD_IDENTITY_TOKEN: &str = "pod-identity-token-abc";

/// A stand-in of the EKS Pod Identity agent: `keys` valid for `valid_for` seconds to the first
/// `answers` requests with the token, 403 afterwards.
async fn pod_identity_agent(
    keys: &AwsKeys,
    valid_for: i64,
    answers: usize,
) -> boundary_test_kit::TestServer {
    let expiration = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + valid_for)
        .unwrap()
        .to_string();
    let answer = serde_json::json!({
        "AccessKeyId": keys.access_key_id,
        "SecretAccessKey": keys.secret_access_key,
        "Token": keys.session_token,
        "AccountId": "123456789012",
        "Expiration": expiration,
    })
    .to_string();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    boundary_test_kit::TestServer::serving(None, move |request: Request<hyper::body::Incoming>| {
        let authorized = request.uri().path() == "/v1/credentials"
            && request
                .headers()
                .get("authorization")
                .is_some_and(|v| v == POD_IDENTITY_TOKEN);
        let (status, body) = if !authorized {
            (401, "{}".to_owned())
        } else if answered.fetch_add(1, Ordering::SeqCst) < answers {
            (200, answer.clone())
        } else {
            (500, "{}".to_owned())
        };
        async move {
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    })
    .await
}

/// The child's env for the Pod Identity agent at `agent` (the token file in `dir`).
fn pod_identity_env(
    agent: &boundary_test_kit::TestServer,
    dir: &std::path::Path,
) -> impl FnOnce(&mut tokio::process::Command) {
    let token_file = dir.join("eks-pod-identity-token");
    std::fs::write(&token_file, POD_IDENTITY_TOKEN).unwrap();
    let uri = format!("http://127.0.0.1:{}/v1/credentials", agent.port());
    move |c| {
        c.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri)
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
    }
}

/// EKS Pod Identity: the chain's container provider asks the agent's endpoint (here a stand-in
/// on loopback) with the token file's content; the credentials are cached between requests.
#[tokio::test]
async fn default_chain_uses_the_pod_identity_endpoint() {
    let keys = real_keys(Some("pod-identity-session-token"));
    let verifier = Verifier::start(&keys).await;
    let agent = pod_identity_agent(&keys, 3600, usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    run_child(&verifier, pod_identity_env(&agent, dir.path())).await;
    // A check and four requests signed, one fetch: the credentials were cached.
    assert_eq!(agent.requests.load(Ordering::SeqCst), 1);
}

/// Credentials close to expiry are renewed on use; when renewal fails, the current ones sign
/// until they expire and renewal is not tried again at once.
#[tokio::test]
async fn default_chain_keeps_valid_credentials_while_renewal_fails() {
    let keys = real_keys(Some("pod-identity-session-token"));
    let verifier = Verifier::start(&keys).await;
    let agent = pod_identity_agent(&keys, 120, 1).await;
    let dir = tempfile::tempdir().unwrap();
    run_child(&verifier, pod_identity_env(&agent, dir.path())).await;
    // The check's fetch and one failed renewal (the first request; the SDK retries it up to 3
    // times), none for the next three requests.
    let failed = agent.requests.load(Ordering::SeqCst) - 1;
    assert!(
        (1..=3).contains(&failed),
        "{failed} failed renewal requests"
    );
}

/// IRSA: the chain's web identity provider calls STS `AssumeRoleWithWebIdentity` with the
/// projected token (here a stand-in of STS on loopback, through `AWS_ENDPOINT_URL_STS`).
#[tokio::test]
async fn default_chain_uses_irsa_web_identity() {
    const TOKEN: &str = "projected-service-account-token";
    let keys = real_keys(Some("irsa-session-token"));
    let verifier = Verifier::start(&keys).await;
    let expiration = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3600)
        .unwrap()
        .to_string();
    let answer = format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>{}</AccessKeyId>
      <SecretAccessKey>{}</SecretAccessKey>
      <SessionToken>{}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/agent/boundary</Arn>
      <AssumedRoleId>AROAEXAMPLE:boundary</AssumedRoleId>
    </AssumedRoleUser>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        keys.access_key_id,
        keys.secret_access_key,
        keys.session_token.as_deref().unwrap()
    );
    let sts = boundary_test_kit::TestServer::serving(
        None,
        move |request: Request<hyper::body::Incoming>| {
            let answer = answer.clone();
            async move {
                let form = request.into_body().collect().await.unwrap().to_bytes();
                let form = String::from_utf8_lossy(&form).into_owned();
                let valid = form.contains("Action=AssumeRoleWithWebIdentity")
                    && form.contains(&format!("WebIdentityToken={TOKEN}"))
                    && form.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fagent");
                let (status, body) = if valid {
                    (200, answer)
                } else {
                    (400, format!("unexpected request: {form}"))
                };
                Response::builder()
                    .status(status)
                    .header("content-type", "text/xml")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let endpoint = format!("http://127.0.0.1:{}", sts.port());
    run_child(&verifier, |c| {
        c.env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
            .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/agent")
            .env("AWS_ROLE_SESSION_NAME", "boundary")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_STS", &endpoint);
    })
    .await;
    assert_eq!(sts.requests.load(Ordering::SeqCst), 1);
}
