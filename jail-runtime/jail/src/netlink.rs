//! Netlink from Rust, so the jail needs no `ip` or `nft` binary in the agent's image: bring `lo`
//! up, add the default routes through it, and install the jail's nftables ruleset.
//!
//! Messages are built by hand (the formats are stable kernel ABI; see `linux/netlink.h`,
//! `linux/rtnetlink.h`, `linux/netfilter/nf_tables.h`). Every request asks for an ACK, so a
//! failure names the message the kernel refused.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

/// A kernel refusal: which request, and the errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {errno}")]
pub struct NetlinkError {
    /// The request that failed, in words.
    pub what: String,
    /// The kernel's answer.
    pub errno: Errno,
}

/// A netlink message under construction.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    /// nftables integers are big-endian.
    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    fn ne32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    fn nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A netlink socket that sends batches and collects their ACKs.
struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open(protocol: SockProtocol) -> Result<Socket, Errno> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )?;
        Ok(Socket { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// Sends `msgs` in one datagram and waits for the ACK of every message that asked for one
    /// (`acked`: sequence number and description).
    fn transact(&mut self, msgs: &[Vec<u8>], acked: &[(u32, String)]) -> Result<(), NetlinkError> {
        let fail = |what: &str, errno| NetlinkError {
            what: what.to_owned(),
            errno,
        };
        let datagram: Vec<u8> = msgs.concat();
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd.as_fd()),
            &datagram,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| fail("sending a netlink request", e))?;
        let mut pending: Vec<&(u32, String)> = acked.iter().collect();
        let mut buf = vec![0u8; 65536];
        while !pending.is_empty() {
            let n = recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd.as_fd()),
                &mut buf,
                MsgFlags::empty(),
            )
            .map_err(|e| fail("reading the netlink answer", e))?;
            let mut at = 0;
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                if len < 16 || at + len > n {
                    return Err(fail("parsing the netlink answer", Errno::EBADMSG));
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let code =
                        i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default());
                    if let Some(i) = pending.iter().position(|(s, _)| *s == seq) {
                        let (_, what) = pending.remove(i);
                        if code != 0 {
                            return Err(fail(what, Errno::from_raw(-code)));
                        }
                    } else if code != 0 {
                        return Err(fail("a netlink batch", Errno::from_raw(-code)));
                    }
                } else if ty == NLMSG_DONE {
                    pending.clear();
                }
                at += (len + 3) & !3;
            }
        }
        Ok(())
    }
}

/// Brings `lo` up and routes every IPv4 (and, when `ipv6`, IPv6) destination through it, so a
/// `connect()` to any address reaches the nftables redirect instead of failing with "network
/// unreachable". Returns whether the IPv6 route could be added (IPv6 may be disabled).
pub fn loopback_only_routes(ipv6: bool) -> Result<bool, NetlinkError> {
    const RTM_NEWLINK: u16 = 16;
    const IFF_UP: u32 = 1;
    let lo = nix::net::if_::if_nametoindex("lo").map_err(|e| NetlinkError {
        what: "finding the loopback interface".into(),
        errno: e,
    })?;
    let mut sock = Socket::open(SockProtocol::NetlinkRoute).map_err(|e| NetlinkError {
        what: "opening a route netlink socket".into(),
        errno: e,
    })?;

    let seq = sock.next_seq();
    let mut link = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    let mut ifinfo = Vec::with_capacity(16);
    ifinfo.extend_from_slice(&[0u8, 0]); // family, pad
    ifinfo.extend_from_slice(&0u16.to_ne_bytes()); // type
    ifinfo.extend_from_slice(&i32::try_from(lo).unwrap_or(1).to_ne_bytes());
    ifinfo.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    ifinfo.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    link.raw(&ifinfo);
    sock.transact(&[link.finish()], &[(seq, "setting lo up".into())])?;

    let route = |sock: &mut Socket, family: u8, scope: u8| {
        const RTM_NEWROUTE: u16 = 24;
        const RTA_OIF: u16 = 4;
        let seq = sock.next_seq();
        let mut msg = Msg::new(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
        );
        // family, dst_len, src_len, tos, table=main, protocol=boot, scope, type=unicast, flags
        let mut rtmsg = vec![family, 0, 0, 0, 254, 3, scope, 1];
        rtmsg.extend_from_slice(&0u32.to_ne_bytes());
        msg.raw(&rtmsg).ne32(RTA_OIF, lo);
        if family == 2 {
            // Without a preferred source, newer kernels (seen on 6.18) pick 0.0.0.0 for a
            // link-scope route on lo, and the forwarder's replies to that address then look
            // like traffic leaving the jail to the egress chain, which resets them.
            const RTA_PREFSRC: u16 = 7;
            msg.attr(RTA_PREFSRC, &[127, 0, 0, 1]);
        }
        let what = format!(
            "adding the default {} route via lo",
            if family == 2 { "IPv4" } else { "IPv6" }
        );
        sock.transact(&[msg.finish()], &[(seq, what)])
    };
    route(&mut sock, 2, 253)?;
    if !ipv6 {
        return Ok(false);
    }
    match route(&mut sock, 10, 0) {
        Ok(()) => Ok(true),
        // IPv6 disabled in this namespace or kernel: nothing to route, nothing to leak.
        Err(e)
            if matches!(
                e.errno,
                Errno::EACCES | Errno::EAFNOSUPPORT | Errno::EOPNOTSUPP | Errno::ENETDOWN
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Name of the jail's nftables table (family `inet`).
pub const TABLE: &str = "agent_boundary";

/// The jail's ruleset, inside the jail's own network namespace:
///
/// ```text
/// table inet agent_boundary {
///   chain redirect { type nat hook output priority -100; policy accept;
///     udp dport 53 redirect to :DNS      # every DNS query, whatever resolver it names
///     tcp dport 53 redirect to :DNS
///     ip daddr 127.0.0.0/8 tcp dport P redirect to :FORWARDER   # for each pod-local port P:
///     ip6 daddr ::1 tcp dport P redirect to :FORWARDER          # the pod's, not the jail's
///     ip daddr 127.0.0.0/8 accept        # the jail's own loopback services stay reachable
///     ip6 daddr ::1 accept
///     meta l4proto tcp redirect to :FORWARDER
///   }
///   chain egress { type filter hook output priority 0; policy accept;
///     ip daddr 127.0.0.0/8 accept
///     ip6 daddr ::1 accept
///     meta l4proto tcp reject with tcp reset
///     reject with icmpx admin-prohibited  # UDP, ICMP, anything else: fail fast
///   }
/// }
/// ```
///
/// A pod-local port is one rule per address family: the lists are short (a pod's sidecars), and
/// a linear match over loopback packets costs nothing next to an anonymous set's extra messages.
/// They go in batches of their own: a batch is one datagram, which must fit the socket's send
/// buffer (about 200 KiB by default, some 400 bytes a rule). Nothing runs in the jail before
/// the last batch is in, and any failure fails the jail.
pub fn install_ruleset(
    forwarder_port: u16,
    dns_port: u16,
    pod_local_ports: &[u16],
) -> Result<(), NetlinkError> {
    let mut sock = Socket::open(SockProtocol::NetlinkNetFilter).map_err(|e| NetlinkError {
        what: "opening a netfilter netlink socket".into(),
        errno: e,
    })?;
    let mut nft = Nft::new(&mut sock);
    nft.table();
    nft.chain("redirect", "nat", -100);
    nft.chain("egress", "filter", 0);

    nft.rule("redirect", "udp dport 53 redirect", |e| {
        e.l4proto(17).dport(53).redirect(dns_port);
    });
    nft.rule("redirect", "tcp dport 53 redirect", |e| {
        e.l4proto(6).dport(53).redirect(dns_port);
    });
    nft.commit()?;
    for ports in pod_local_ports.chunks(POD_LOCAL_PORTS_PER_BATCH) {
        let mut nft = Nft::new(&mut sock);
        for &port in ports {
            nft.rule(
                "redirect",
                &format!("ip daddr 127.0.0.0/8 tcp dport {port} redirect"),
                |e| {
                    e.nfproto(2)
                        .ip_daddr_in_loopback()
                        .l4proto(6)
                        .dport(port)
                        .redirect(forwarder_port);
                },
            );
            nft.rule(
                "redirect",
                &format!("ip6 daddr ::1 tcp dport {port} redirect"),
                |e| {
                    e.nfproto(10)
                        .ip6_daddr_loopback()
                        .l4proto(6)
                        .dport(port)
                        .redirect(forwarder_port);
                },
            );
        }
        nft.commit()?;
    }
    let mut nft = Nft::new(&mut sock);
    for chain in ["redirect", "egress"] {
        nft.rule(chain, "ip daddr 127.0.0.0/8 accept", |e| {
            e.nfproto(2).ip_daddr_in_loopback().verdict(1);
        });
        nft.rule(chain, "ip6 daddr ::1 accept", |e| {
            e.nfproto(10).ip6_daddr_loopback().verdict(1);
        });
    }
    nft.rule("redirect", "meta l4proto tcp redirect", |e| {
        e.l4proto(6).redirect(forwarder_port);
    });
    nft.rule("egress", "meta l4proto tcp reject with tcp reset", |e| {
        e.l4proto(6).reject(1, 0);
    });
    nft.rule("egress", "reject with icmpx admin-prohibited", |e| {
        e.reject(2, 3);
    });
    nft.commit()
}

/// Pod-local ports per nftables batch (two rules each).
const POD_LOCAL_PORTS_PER_BATCH: usize = 64;

/// An nftables batch for the jail's table.
struct Nft<'a> {
    sock: &'a mut Socket,
    msgs: Vec<Vec<u8>>,
    acked: Vec<(u32, String)>,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;

impl<'a> Nft<'a> {
    fn new(sock: &'a mut Socket) -> Nft<'a> {
        Nft {
            sock,
            msgs: Vec::new(),
            acked: Vec::new(),
        }
    }

    fn nfgenmsg(msg: &mut Msg, family: u8, res_id: u16) {
        let mut h = vec![family, 0];
        h.extend_from_slice(&res_id.to_be_bytes());
        msg.raw(&h);
    }

    fn message(&mut self, msg_type: u16, flags: u16, what: String, build: impl FnOnce(&mut Msg)) {
        let seq = self.sock.next_seq();
        let mut msg = Msg::new((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, seq);
        Self::nfgenmsg(&mut msg, NFPROTO_INET, 0);
        build(&mut msg);
        self.msgs.push(msg.finish());
        self.acked.push((seq, what));
    }

    fn table(&mut self) {
        const NFT_MSG_NEWTABLE: u16 = 0;
        self.message(
            NFT_MSG_NEWTABLE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            format!("creating nftables table inet {TABLE}"),
            |m| {
                m.str(1, TABLE).be32(2, 0);
            },
        );
    }

    fn chain(&mut self, name: &str, kind: &str, priority: i32) {
        const NFT_MSG_NEWCHAIN: u16 = 3;
        const NF_INET_LOCAL_OUT: u32 = 3;
        self.message(
            NFT_MSG_NEWCHAIN,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            format!("creating nftables {kind} chain {name} (hook output)"),
            |m| {
                m.str(1, TABLE).str(3, name);
                m.nest(4)
                    .be32(1, NF_INET_LOCAL_OUT)
                    .be32(2, priority.cast_unsigned())
                    .end();
                m.be32(5, 1).str(7, kind);
            },
        );
    }

    fn rule(&mut self, chain: &str, text: &str, exprs: impl FnOnce(&mut Exprs<'_>)) {
        const NFT_MSG_NEWRULE: u16 = 6;
        self.message(
            NFT_MSG_NEWRULE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
            format!("adding nftables rule \"{text}\" to chain {chain}"),
            |m| {
                m.str(1, TABLE).str(2, chain);
                m.nest(4);
                exprs(&mut Exprs { m });
                m.end();
            },
        );
    }

    fn commit(self) -> Result<(), NetlinkError> {
        const NFNL_MSG_BATCH_BEGIN: u16 = 16;
        const NFNL_MSG_BATCH_END: u16 = 17;
        let begin_seq = self.sock.next_seq();
        let mut begin = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq);
        Self::nfgenmsg(&mut begin, 0, NFNL_SUBSYS_NFTABLES);
        let end_seq = self.sock.next_seq();
        let mut end = Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq);
        Self::nfgenmsg(&mut end, 0, NFNL_SUBSYS_NFTABLES);
        let mut all = vec![begin.finish()];
        all.extend(self.msgs);
        all.push(end.finish());
        self.sock.transact(&all, &self.acked)
    }
}

/// Expressions of one rule (registers: 1 = `NFT_REG_1`, 0 = the verdict register).
struct Exprs<'m> {
    m: &'m mut Msg,
}

impl Exprs<'_> {
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Msg)) -> &mut Self {
        self.m.nest(1).str(1, name).nest(2);
        data(self.m);
        self.m.end().end();
        self
    }

    fn cmp_eq(&mut self, value: &[u8]) -> &mut Self {
        self.expr("cmp", |m| {
            m.be32(1, 1).be32(2, 0);
            m.nest(3).attr(1, value).end();
        })
    }

    fn meta(&mut self, key: u32) -> &mut Self {
        self.expr("meta", |m| {
            m.be32(2, key).be32(1, 1);
        })
    }

    /// `meta nfproto` (2 = IPv4, 10 = IPv6).
    fn nfproto(&mut self, family: u8) -> &mut Self {
        self.meta(15).cmp_eq(&[family])
    }

    /// `meta l4proto` (6 = TCP, 17 = UDP).
    fn l4proto(&mut self, proto: u8) -> &mut Self {
        self.meta(16).cmp_eq(&[proto])
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32) -> &mut Self {
        self.expr("payload", |m| {
            m.be32(1, 1).be32(2, base).be32(3, offset).be32(4, len);
        })
    }

    /// Transport header destination port (after an l4proto match).
    fn dport(&mut self, port: u16) -> &mut Self {
        self.payload(2, 2, 2).cmp_eq(&port.to_be_bytes())
    }

    fn ip_daddr_in_loopback(&mut self) -> &mut Self {
        self.payload(1, 16, 4)
            .expr("bitwise", |m| {
                m.be32(1, 1).be32(2, 1).be32(3, 4);
                m.nest(4).attr(1, &[0xff, 0, 0, 0]).end();
                m.nest(5).attr(1, &[0, 0, 0, 0]).end();
            })
            .cmp_eq(&[127, 0, 0, 0])
    }

    fn ip6_daddr_loopback(&mut self) -> &mut Self {
        self.payload(1, 24, 16)
            .cmp_eq(&std::net::Ipv6Addr::LOCALHOST.octets())
    }

    /// `redirect to :port` (the port is loaded into register 1 first).
    fn redirect(&mut self, port: u16) -> &mut Self {
        self.expr("immediate", |m| {
            m.be32(1, 1);
            m.nest(2).attr(1, &port.to_be_bytes()).end();
        })
        .expr("redir", |m| {
            m.be32(1, 1).be32(3, 2);
        })
    }

    /// `reject`: type 1 = TCP reset, 2 = ICMPx unreachable with `code`.
    fn reject(&mut self, kind: u32, code: u8) -> &mut Self {
        self.expr("reject", |m| {
            m.be32(1, kind).attr(2, &[code]);
        })
    }

    /// A verdict (1 = accept, 0 = drop).
    fn verdict(&mut self, code: i32) -> &mut Self {
        self.expr("immediate", |m| {
            m.be32(1, 0);
            m.nest(2).nest(2).be32(1, code.cast_unsigned()).end().end();
        })
    }
}
