//! The proxy's decisions (`proxy/decide.rs`) over arbitrary rules, hosts, ports, methods, paths
//! and server names: no panic, and in Enforce nothing a deny rule (or the absence of an allow
//! rule) refuses is ever relayed, tunnelled or forwarded.
//!
//! Input: lines `allow rule`, `deny rule`, then `METHOD host port target [sni [Name:value…]]` (the
//! target may carry a query, the words after the server name are request headers); the first
//! byte's low bit picks the mode.
#![no_main]

use boundary_api::Mode;
use boundary_api::rules::{self, Host, HttpRequest, RequestPath, RuleSet, RuleSource};
use boundary_proxy::audit::Decision;
use boundary_proxy::decide::{self, Connect, Connection, Request, Tls};
use boundary_proxy::wire::Destination;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mode = if first & 1 == 0 {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let allow = vec![lines.next().unwrap_or_default().to_owned()];
    let deny = vec![lines.next().unwrap_or_default().to_owned()];
    let request = lines.next().unwrap_or_default();
    let mut compiled = Vec::new();
    // A rule that does not compile is left out, as the operator withholds it.
    for (allow, deny) in [(&allow[..], &[][..]), (&[][..], &deny[..])] {
        if let Ok(rules) = rules::compile(RuleSource {
            field_prefix: "--",
            allow,
            deny,
            ..RuleSource::default()
        }) {
            compiled.extend(rules);
        }
    }
    let set = RuleSet::new(compiled, mode);

    let mut words = request.split(' ');
    let method = words.next().unwrap_or("GET");
    let Some(Ok(host)) = words.next().map(Host::parse) else {
        return;
    };
    let Some(Ok(port)) = words.next().map(str::parse::<u16>) else {
        return;
    };
    let target = words.next().unwrap_or("/");
    let Ok(path) = RequestPath::parse(target) else {
        return;
    };
    let sni = words.next();
    // Further words are request headers, `Name:value`.
    let headers: Vec<(&str, &[u8])> = words
        .map(|w| {
            let (name, value) = w.split_once(':').unwrap_or((w, ""));
            (name, value.as_bytes())
        })
        .collect();
    let enforce = mode == Mode::Enforce;
    let pod_local = decide::is_pod_local_request(&host);

    let req = HttpRequest {
        host: &host,
        port,
        method,
        path: &path,
        headers: &headers,
        query: rules::raw_query(target),
    };
    match decide::request(&set, req) {
        Request::Forward(ruling) => {
            assert_ne!(
                ruling.decision,
                Decision::Deny,
                "a refusal is never forwarded"
            );
            if enforce && !pod_local {
                assert!(
                    set.check_http(req).is_allow(),
                    "Enforce forwards only what a rule allows"
                );
            }
            if !pod_local && set.check_http(req).deny_rule().is_some() {
                assert_eq!(ruling.decision, Decision::WouldDeny, "deny beats allow");
            }
        }
        Request::Deny { ruling, .. } => {
            assert_eq!(ruling.decision, Decision::Deny);
            assert!(
                enforce || pod_local,
                "Audit refuses only reserved pod-local ports"
            );
        }
    }

    let dest = Destination {
        dst: match host {
            Host::Ip(ip) => std::net::SocketAddr::new(ip, port),
            Host::Name(_) => std::net::SocketAddr::from(([198, 18, 0, 1], port)),
        },
        name: host.name().map(str::to_owned),
        container: None,
        tier: None,
    };
    match decide::connection(&set, &dest) {
        Connection::Relay(ruling) if enforce => {
            assert_eq!(ruling.decision, Decision::Allow);
            assert!(
                set.deny_for(&host, port).is_none(),
                "a deny rule's host is never relayed"
            );
        }
        Connection::PodLocal(ruling) if enforce => {
            assert!(
                ruling.decision != Decision::WouldDeny,
                "no would-deny in Enforce"
            );
        }
        _ => {}
    }

    match decide::tls(&set, &host, port, sni) {
        Tls::Passthrough { name, ruling } if enforce => {
            assert_eq!(ruling.decision, Decision::Allow);
            assert!(
                set.deny_for(&name, port).is_none(),
                "a deny rule's host is never passed through"
            );
        }
        Tls::Intercept { name, .. } if enforce => {
            assert!(
                set.may_allow_http(&name, port),
                "interception only where a request could be allowed"
            );
        }
        Tls::Alert { ruling, .. } | Tls::Refuse(ruling) => {
            assert_eq!(ruling.decision, Decision::Deny);
        }
        _ => {}
    }

    if let Connect::Tunnel = decide::connect(&set, &host, port)
        && enforce
        && !pod_local
    {
        assert!(
            decide::could_allow(&set, &host, port),
            "a tunnel only where a rule could allow"
        );
    }
});
