//! The TCP ports that cross the jail's edge inside a pod: those a jailed container serves
//! (declared, and probed by the kubelet), which `boundary run` relays into the jail, and those the
//! pod's other containers serve on the shared loopback, which the jail sends to the proxy where
//! pod-local rules decide.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use boundary_api::contract::{containers, ports};

fn tcp_ports(c: &Container) -> impl Iterator<Item = u16> + '_ {
    c.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p > 0)
}

/// A probe's port, named ports looked up among the container's declared ones.
fn probe_port(c: &Container, probe: &Probe) -> Option<u16> {
    let port = probe
        .http_get
        .as_ref()
        .map(|h| &h.port)
        .or_else(|| probe.tcp_socket.as_ref().map(|t| &t.port));
    match port {
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
        None => probe.grpc.as_ref().and_then(|g| u16::try_from(g.port).ok()),
    }
    .filter(|p| *p > 0)
}

/// The ports a container serves: its declared TCP ports and its probes' ports, sorted.
pub fn served(c: &Container) -> Vec<u16> {
    let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
    tcp_ports(c)
        .chain(
            probes
                .into_iter()
                .flatten()
                .filter_map(|p| probe_port(c, p)),
        )
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The TCP ports every other container of the pod declares (native sidecars are init
/// containers), except this project's own sidecar's, sorted.
pub fn of_other_containers(spec: &PodSpec, name: &str) -> Vec<u16> {
    let own = ports::NOT_POD_LOCAL;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name != name && c.name != containers::SIDECAR)
        .flat_map(tcp_ports)
        .filter(|p| !own.contains(p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(value: serde_json::Value) -> Container {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn served_ports_are_declared_tcp_ports_and_probe_ports() {
        let c = container(json!({
            "name": "runtime",
            "ports": [
                {"name": "http", "containerPort": 8080},
                {"containerPort": 53, "protocol": "UDP"},
                {"name": "grpc", "containerPort": 9000, "protocol": "TCP"}
            ],
            "readinessProbe": {"httpGet": {"path": "/alive", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": 3000}},
            "startupProbe": {"grpc": {"port": 9001}}
        }));
        assert_eq!(served(&c), [3000, 8080, 9000, 9001]);
        assert!(served(&container(json!({"name": "plain"}))).is_empty());
        // A named probe port without a declared port of that name is nothing to relay.
        let unknown = container(json!({
            "name": "x", "readinessProbe": {"httpGet": {"port": "missing"}}
        }));
        assert!(served(&unknown).is_empty());
    }

    #[test]
    fn other_containers_ports_include_native_sidecars_and_exclude_the_own() {
        let spec: PodSpec = serde_json::from_value(json!({
            "initContainers": [
                {"name": "cloud-sql-proxy", "restartPolicy": "Always", "ports": [{"containerPort": 5432}]},
                {"name": "boundary", "ports": [{"containerPort": 15090}]}
            ],
            "containers": [
                {"name": "agent", "ports": [{"containerPort": 8080}]},
                {"name": "dind", "ports": [{"containerPort": 2375}, {"containerPort": 2376}]}
            ]
        }))
        .unwrap();
        assert_eq!(of_other_containers(&spec, "agent"), [2375, 2376, 5432]);
        assert_eq!(of_other_containers(&spec, "dind"), [5432, 8080]);
    }
}
