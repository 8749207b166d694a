//! The private-address guard (SSRF, DNS rebinding, cloud metadata): before every upstream
//! connection the proxy judges the address it is about to connect to (each address tried, not
//! only the first DNS answer), so a name an allow rule lets through cannot be pointed at the
//! node, the cluster's internal network or the cloud's metadata service by its DNS answers.
//!
//! [`classify`] says which special range an address is in ([`Category`]; IPv4-mapped,
//! IPv4-compatible, NAT64 and 6to4 IPv6 forms are judged by the IPv4 address they carry);
//! [`judge`] says whether a connection to it may go ahead. An address in no special range is
//! public and always allowed. A special address is allowed only when
//!
//! * the operator pinned it for the name (`--resolve HOST=IP`, `spec.resolve`): the address did
//!   not come from DNS, so no answer can have pointed the name there; or
//! * an allow rule names an address or network containing it (`domain=10.0.0.0/8`), on the
//!   connection's port, whatever the rule's kind, methods or paths: the rule already makes the
//!   range reachable by address, so reaching it by a name adds no reach. Loopback and the
//!   unspecified address are never allowed this way: the pod's loopback is reached only through
//!   `podLocal` rules.
//!
//! Pure: the plumbing (resolution, connecting, audit, the 403) is in [`crate::upstream`].

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use boundary_api::rules::{DomainPattern, Host, Rule, RuleKind};

/// The special ranges the guard refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `0.0.0.0/8`, `::`: connecting there reaches the local host's listeners.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// Cloud instance metadata and host services, whose answers include credentials:
    /// `169.254.169.254` (AWS, GCP, Azure, Oracle, `OpenStack`…), `169.254.170.2` (ECS task
    /// credentials), `fd00:ec2::254` (AWS IPv6), `100.100.100.200` (Alibaba), `168.63.129.16`
    /// (the Azure wire server, a public address reachable only from inside Azure).
    CloudMetadata,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` (pod, service and node
    /// networks, home and office networks).
    Private,
    /// `100.64.0.0/10`, RFC 6598 (carrier-grade NAT, also used by some clusters and clouds).
    SharedAddressSpace,
    /// `fc00::/7`, RFC 4193 unique local addresses (the IPv6 RFC 1918).
    UniqueLocal,
    /// `fec0::/10`, deprecated site-local addresses (still routed inside some networks).
    SiteLocal,
    /// `192.0.0.0/24`, RFC 6890 IETF protocol assignments (NAT64/DS-Lite internals).
    ProtocolAssignment,
    /// `224.0.0.0/4`, `ff00::/8`: no TCP server lives there.
    Multicast,
    /// `240.0.0.0/4` (reserved) and `255.255.255.255` (broadcast).
    Reserved,
}

impl Category {
    /// The stable name used in audit records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Unspecified => "unspecified",
            Category::Loopback => "loopback",
            Category::CloudMetadata => "cloud-metadata",
            Category::LinkLocal => "link-local",
            Category::Private => "private",
            Category::SharedAddressSpace => "shared-address-space",
            Category::UniqueLocal => "unique-local",
            Category::SiteLocal => "site-local",
            Category::ProtocolAssignment => "protocol-assignment",
            Category::Multicast => "multicast",
            Category::Reserved => "reserved",
        }
    }

    /// What the range is, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Category::Unspecified => "the unspecified address (this host)",
            Category::Loopback => "a loopback address",
            Category::CloudMetadata => "a cloud metadata service address",
            Category::LinkLocal => "a link-local address",
            Category::Private => "a private address (RFC 1918)",
            Category::SharedAddressSpace => "a carrier-grade NAT address (100.64.0.0/10)",
            Category::UniqueLocal => "a unique local IPv6 address (fc00::/7)",
            Category::SiteLocal => "a site-local IPv6 address (fec0::/10)",
            Category::ProtocolAssignment => "an IETF protocol address (192.0.0.0/24)",
            Category::Multicast => "a multicast address",
            Category::Reserved => "a reserved or broadcast address",
        }
    }

    /// Whether only a pin can allow it (never a rule for its network).
    fn local_host(self) -> bool {
        matches!(self, Category::Unspecified | Category::Loopback)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cloud metadata addresses that are not special by range alone.
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];
/// AWS's IPv6 instance metadata service.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// The special range `ip` is in, `None` for a public address.
pub fn classify(ip: IpAddr) -> Option<Category> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Category> {
    let [a, b, c, _] = ip.octets();
    Some(if METADATA_V4.contains(&ip) {
        Category::CloudMetadata
    } else if a == 0 {
        Category::Unspecified
    } else if a == 127 {
        Category::Loopback
    } else if a == 169 && b == 254 {
        Category::LinkLocal
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        Category::Private
    } else if a == 100 && (64..128).contains(&b) {
        Category::SharedAddressSpace
    } else if a == 192 && b == 0 && c == 0 {
        Category::ProtocolAssignment
    } else if (224..240).contains(&a) {
        Category::Multicast
    } else if a >= 240 {
        Category::Reserved
    } else {
        return None;
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Category> {
    let first = ip.segments()[0];
    Some(if ip == METADATA_V6 {
        Category::CloudMetadata
    } else if ip.is_unspecified() {
        Category::Unspecified
    } else if ip.is_loopback() {
        Category::Loopback
    } else if first & 0xffc0 == 0xfe80 {
        Category::LinkLocal
    } else if first & 0xffc0 == 0xfec0 {
        Category::SiteLocal
    } else if first & 0xfe00 == 0xfc00 {
        Category::UniqueLocal
    } else if first & 0xff00 == 0xff00 {
        Category::Multicast
    } else {
        return None;
    })
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some stacks), NAT64
/// (`64:ff9b::/96`, `64:ff9b:1::/48`) and 6to4 (`2002:AABB:CCDD::/48`). `::` and `::1` are
/// themselves, not `0.0.0.0` and `0.0.0.1`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            (s[1] & 0xff) as u8,
            (s[2] >> 8) as u8,
            (s[2] & 0xff) as u8,
        ));
    }
    None
}

/// Where an address to connect to came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// DNS, or the client's own IP literal.
    Asked,
    /// The operator pinned it for the name (`--resolve`, `spec.resolve`).
    Pinned,
}

/// The guard's verdict on one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement<'r> {
    /// In no special range.
    Public,
    /// Special, but pinned for the name by the operator.
    Pinned(Category),
    /// Special, but an allow rule names its address or network.
    AllowedBy(Category, &'r Rule),
    /// Refused.
    Refused(Refusal),
}

/// A refused address and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The address.
    pub ip: IpAddr,
    /// Its range.
    pub category: Category,
}

impl Refusal {
    /// The reason shown in the audit record and the 403 page: the address, its range, and how to
    /// allow it.
    pub fn explain(&self, host: &Host, port: u16) -> String {
        let Refusal { ip, category } = self;
        let whose = match host {
            Host::Name(name) => format!("{ip}, an address of {name},"),
            Host::Ip(_) => ip.to_string(),
        };
        let head = format!(
            "private-address guard: refused to connect to {whose} which is {}",
            category.describe()
        );
        let pin = match host {
            Host::Name(name) => format!(
                "pin the name to it (spec.resolve: [{{host: {name}, addresses: [\"{ip}\"]}}], or \
                 boundary run --resolve {name}={ip})"
            ),
            Host::Ip(_) => String::new(),
        };
        if category.local_host() {
            let pin = if pin.is_empty() {
                String::new()
            } else {
                format!(", or {pin}")
            };
            format!(
                "{head} [{category}]: the pod's loopback is reached only through podLocal rules \
                 (spec.podLocal, boundary run --allow-pod-local){pin}"
            )
        } else {
            let pin = if pin.is_empty() {
                String::new()
            } else {
                format!(" or {pin}")
            };
            format!(
                "{head} [{category}]: to allow it, add a rule for the address or its network \
                 (domain={ip} port={port}){pin}"
            )
        }
    }
}

/// Judges a connection to `ip` on `port`: allowed when public, pinned for the name, or named by
/// one of `rules` (allow rules; any other kind is ignored). See the module documentation.
pub fn judge(ip: IpAddr, port: u16, origin: Origin, rules: &[Rule]) -> Judgement<'_> {
    let Some(category) = classify(ip) else {
        return Judgement::Public;
    };
    if origin == Origin::Pinned {
        return Judgement::Pinned(category);
    }
    if !category.local_host()
        && let Some(rule) = rules.iter().find(|r| names_address(r, ip, port))
    {
        return Judgement::AllowedBy(category, rule);
    }
    Judgement::Refused(Refusal { ip, category })
}

/// Whether allow rule `rule` names `ip` (or, for an IPv6 form of an IPv4 address, that
/// address) by an address or network, on `port`.
fn names_address(rule: &Rule, ip: IpAddr, port: u16) -> bool {
    if rule.is_deny() || rule.kind == RuleKind::PodLocal {
        return false;
    }
    let forms = [
        Some(ip),
        match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        },
    ];
    let named = rule.domains.as_ref().is_some_and(|domains| {
        domains.iter().any(|d| {
            matches!(d, DomainPattern::Ip(_))
                && forms.iter().flatten().any(|ip| d.matches(&Host::Ip(*ip)))
        })
    });
    named && rule.ports.as_ref().is_none_or(|p| p.contains(&port))
}

/// What lifts the guard for the connections of one rule set: the names the policy pins to
/// addresses (`spec.resolve`; `--resolve` is the [`crate::upstream::Upstream`]'s own) and the
/// allow rules that name addresses or networks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exemptions {
    /// Host name (normalised, as [`Host::parse`] gives it) → its pinned addresses.
    pub pins: HashMap<String, Vec<IpAddr>>,
    /// Allow rules naming addresses or networks ([`address_rules`]).
    pub rules: Vec<Rule>,
}

impl Exemptions {
    /// The exemptions of `rules` (the allow rules of a rule set) and `pins`.
    pub fn new(rules: &[Rule], pins: HashMap<String, Vec<IpAddr>>) -> Exemptions {
        Exemptions {
            pins,
            rules: address_rules(rules),
        }
    }
}

/// The allow rules that name addresses or networks (the only ones [`judge`] looks at), so a
/// connector can keep them without the whole rule set.
pub fn address_rules(rules: &[Rule]) -> Vec<Rule> {
    rules
        .iter()
        .filter(|r| {
            !r.is_deny()
                && r.kind != RuleKind::PodLocal
                && r.domains
                    .as_ref()
                    .is_some_and(|d| d.iter().any(|d| matches!(d, DomainPattern::Ip(_))))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_api::rules::{self, RuleSource};

    fn allow(rules: &[&str]) -> Vec<Rule> {
        let allow: Vec<String> = rules.iter().map(|s| (*s).to_owned()).collect();
        rules::compile(RuleSource {
            policy: Some("p"),
            field_prefix: "spec.",
            allow: &allow,
            ..RuleSource::default()
        })
        .unwrap()
    }

    #[test]
    fn addresses_are_classified_by_range_and_embedded_ipv4() {
        use Category::*;
        for (ip, want) in [
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("192.0.2.10", None),
            ("198.18.0.1", None),
            ("2606:4700::1111", None),
            ("64:ff9b::808:808", None),
            ("2002:808:808::1", None),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.1.2", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("169.254.170.2", Some(CloudMetadata)),
            ("100.100.100.200", Some(CloudMetadata)),
            ("168.63.129.16", Some(CloudMetadata)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("169.254.1.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.15.0.1", None),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("192.169.1.1", None),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("192.0.0.8", Some(ProtocolAssignment)),
            ("224.0.0.1", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Reserved)),
            // IPv6 forms of IPv4 addresses are judged by the IPv4 address.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("::10.1.2.3", Some(Private)),
            ("::169.254.169.254", Some(CloudMetadata)),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("64:ff9b:1::a00:1", Some(Private)),
            ("2002:a9fe:a9fe::1", Some(CloudMetadata)),
            ("2002:7f00:1::", Some(Loopback)),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(classify(ip), want, "{ip}");
        }
    }

    #[test]
    fn special_addresses_pass_only_when_pinned_or_named_by_a_rule() {
        let rules = allow(&[
            "domain=api.example.com",
            "domain=10.0.0.0/8",
            "domain=169.254.169.254 port=80",
            "domain=172.16.0.0/12 method=GET",
            "domain=fd00::/8",
            "domain=127.0.0.0/8",
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let verdict = |addr: &str, port, origin| match judge(ip(addr), port, origin, &rules) {
            Judgement::Public => "public".to_owned(),
            Judgement::Pinned(_) => "pinned".to_owned(),
            Judgement::AllowedBy(_, rule) => format!("rule {}", rule.origin().text),
            Judgement::Refused(r) => format!("refused {}", r.category),
        };
        for (addr, port, origin, want) in [
            ("93.184.216.34", 443, Origin::Asked, "public"),
            ("10.1.2.3", 443, Origin::Asked, "rule domain=10.0.0.0/8"),
            (
                "::ffff:10.1.2.3",
                443,
                Origin::Asked,
                "rule domain=10.0.0.0/8",
            ),
            ("11.1.2.3", 443, Origin::Asked, "public"),
            ("192.168.1.1", 443, Origin::Asked, "refused private"),
            ("192.168.1.1", 443, Origin::Pinned, "pinned"),
            // Metadata: refused, unless named (on its port) or pinned.
            (
                "169.254.169.254",
                443,
                Origin::Asked,
                "refused cloud-metadata",
            ),
            (
                "169.254.169.254",
                80,
                Origin::Asked,
                "rule domain=169.254.169.254 port=80",
            ),
            ("169.254.169.254", 80, Origin::Pinned, "pinned"),
            ("fd00:ec2::254", 80, Origin::Asked, "rule domain=fd00::/8"),
            ("fe80::1", 80, Origin::Asked, "refused link-local"),
            // A rule's method or path does not narrow the address it opens.
            (
                "172.20.0.1",
                80,
                Origin::Asked,
                "rule domain=172.16.0.0/12 method=GET",
            ),
            (
                "100.64.1.1",
                80,
                Origin::Asked,
                "refused shared-address-space",
            ),
            // Loopback: never by a network rule (podLocal rules), only by a pin.
            ("127.0.0.1", 80, Origin::Asked, "refused loopback"),
            ("::ffff:127.0.0.1", 80, Origin::Asked, "refused loopback"),
            ("127.0.0.1", 80, Origin::Pinned, "pinned"),
            ("0.0.0.0", 80, Origin::Asked, "refused unspecified"),
        ] {
            assert_eq!(
                verdict(addr, port, origin),
                want,
                "{addr}:{port} {origin:?}"
            );
        }
        // Deny rules and name rules never exempt an address.
        let names = allow(&["domain=*", "domain=*.internal"]);
        assert!(matches!(
            judge(ip("10.0.0.1"), 80, Origin::Asked, &names),
            Judgement::Refused(_)
        ));
        assert!(address_rules(&names).is_empty());
        assert_eq!(address_rules(&rules).len(), 5, "the network rules only");
    }

    #[test]
    fn refusals_say_which_address_which_range_and_how_to_allow_it() {
        let refusal = |ip: &str| Refusal {
            ip: ip.parse().unwrap(),
            category: classify(ip.parse().unwrap()).unwrap(),
        };
        let name = Host::parse("metadata.example").unwrap();
        let text = refusal("169.254.169.254").explain(&name, 80);
        for part in [
            "169.254.169.254",
            "metadata.example",
            "cloud metadata",
            "[cloud-metadata]",
            "domain=169.254.169.254 port=80",
            "spec.resolve",
            "--resolve metadata.example=169.254.169.254",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        let text = refusal("127.0.0.1").explain(&name, 80);
        assert!(text.contains("podLocal"), "{text}");
        assert!(!text.contains("domain=127"), "{text}");
        let literal = refusal("10.0.0.1").explain(&Host::parse("10.0.0.1").unwrap(), 8080);
        assert!(literal.contains("domain=10.0.0.1 port=8080"), "{literal}");
        assert!(!literal.contains("resolve"), "{literal}");
    }
}
