//! The jail on real namespaces, as root and as an unprivileged user: least privilege inside,
//! allowed traffic through the proxy, every escape Coder's jail allows (and more) refused, TTY,
//! signals and exit codes passed through, and nothing left behind after SIGKILL.

mod common;

use std::time::Duration;

use common::{
    As, TempDir, TestCa, TestServer, boundary, jailed, output, require_root, status_value, stderr,
    stdout,
};

const PY: &str = "/usr/bin/python3";

fn assert_no_privileges(who: As, tier: &str, text: &str) {
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_value(text, key),
            Some("0000000000000000"),
            "{who:?}/{tier}: {key} in\n{text}"
        );
    }
    assert_eq!(
        status_value(text, "NoNewPrivs"),
        Some("1"),
        "{who:?}/{tier}:\n{text}"
    );
}

#[tokio::test]
async fn the_command_runs_with_no_capabilities_and_no_new_privs_as_the_caller() {
    require_root();
    for (who, tier, uid) in [
        (As::Root, "userns", "0"),
        (As::Nobody, "userns", "65534"),
        (As::Root, "privileged-netns", "0"),
    ] {
        let out = jailed(
            who,
            &["--tier", tier],
            "cat /proc/self/status; echo uid=$(id -u) gid=$(id -g)",
        )
        .await;
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "{who:?}/{tier}: {}\n{}",
            stderr(&out),
            text
        );
        assert_no_privileges(who, tier, &text);
        assert!(
            text.contains(&format!("uid={uid} gid={uid}")),
            "{who:?}/{tier}: runs as the caller:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_command_runs_in_the_jails_own_namespaces_of_every_kind() {
    const KINDS: [&str; 6] = ["net", "mnt", "ipc", "pid", "user", "uts"];
    require_root();
    let script = KINDS.map(|k| format!("echo {k}=$(readlink /proc/self/ns/{k})"));
    let ours = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    for (who, tier, own_user) in [
        (As::Root, "userns", true),
        (As::Nobody, "userns", true),
        (As::Root, "privileged-netns", false),
    ] {
        let out = jailed(who, &["--tier", tier], &script.join("; ")).await;
        let text = stdout(&out);
        assert!(out.status.success(), "{who:?}/{tier}: {}", stderr(&out));
        for kind in KINDS {
            let jailed = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{kind}=")))
                .unwrap_or_else(|| panic!("{who:?}/{tier}: no {kind} in\n{text}"));
            // The host name is the pod's; a user namespace only where the tier makes one.
            let own = match kind {
                "uts" => false,
                "user" => own_user,
                _ => true,
            };
            assert_eq!(
                jailed != ours(kind),
                own,
                "{who:?}/{tier}: {kind} namespace {jailed}, the caller's {}",
                ours(kind)
            );
        }
    }
}

#[tokio::test]
async fn the_jail_has_its_own_pid_namespace_and_only_loopback() {
    require_root();
    let out = jailed(
        As::Nobody,
        &[],
        "echo pid=$$; ls /proc | grep -c '^[0-9]' ; ip -o link | cut -d: -f2; ls /sys/class/net | sed 's/^/sys:/'; cat /etc/resolv.conf",
    )
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("pid=2\n"),
        "the command is PID 2 under the jail's init:\n{text}"
    );
    let procs: usize = text.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(procs <= 4, "only the jail's processes are visible:\n{text}");
    let links: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(' '))
        .map(str::trim)
        .collect();
    assert_eq!(
        links,
        ["lo"],
        "only lo in the jail's network namespace:\n{text}"
    );
    let sys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("sys:"))
        .collect();
    assert_eq!(sys, ["lo"], "/sys shows the jail's interfaces:\n{text}");
    assert!(text.contains("nameserver 127.0.0.1"), "{text}");
}

#[tokio::test]
async fn allowed_traffic_goes_through_the_proxy_and_the_rest_is_denied() {
    require_root();
    let ca = TestCa::new();
    let http = TestServer::start(None).await;
    let https = TestServer::start(Some(
        ca.server_config(&["allowed.test", "other.test"], common::Alpn::Http1),
    ))
    .await;
    for who in [As::Root, As::Nobody] {
        let audit = TempDir::new("audit");
        let audit_file = audit.path().join("audit.jsonl");
        let script = format!(
            "curl -sS http://allowed.test:{h}/x; \
             curl -sS https://allowed.test:{s}/y; \
             curl -sS -o /dev/null -w 'denied-http=%{{http_code}}\\n' http://other.test:{h}/z; \
             curl -sS https://other.test:{s}/w 2>&1 | head -c 300; echo; \
             curl -sS -o /dev/null -w 'post=%{{http_code}}\\n' -X POST http://allowed.test:{h}/x",
            h = http.port(),
            s = https.port()
        );
        let args = [
            "--allow",
            "domain=allowed.test method=GET",
            "--resolve",
            "allowed.test=127.0.0.1",
            "--resolve",
            "other.test=127.0.0.1",
            "--upstream-ca",
            ca.pem_path.to_str().unwrap(),
            "--audit-file",
            audit_file.to_str().unwrap(),
        ];
        let https_before = https.connections.load(std::sync::atomic::Ordering::SeqCst);
        let out = jailed(who, &args, &script).await;
        let text = stdout(&out);
        assert!(out.status.success(), "{who:?}: {}\n{text}", stderr(&out));
        assert!(
            text.contains(&format!("hello GET allowed.test:{} /x", http.port())),
            "{who:?} plain HTTP allowed:\n{text}"
        );
        assert!(
            text.contains(&format!("hello GET allowed.test:{} /y", https.port())),
            "{who:?} HTTPS intercepted and allowed:\n{text}"
        );
        assert!(text.contains("denied-http=403"), "{who:?}:\n{text}");
        assert!(
            text.contains("alert access denied"),
            "{who:?}: HTTPS to a host no rule allows is refused before TLS:\n{text}"
        );
        assert!(
            text.contains("post=403"),
            "{who:?}: method rules hold:\n{text}"
        );
        assert_eq!(
            https.connections.load(std::sync::atomic::Ordering::SeqCst) - https_before,
            1,
            "{who:?}: the denied HTTPS request never reached the server"
        );
        let audit = std::fs::read_to_string(&audit_file).unwrap();
        let records: Vec<serde_json::Value> = audit
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let decisions: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r["host"].as_str().unwrap(), r["decision"].as_str().unwrap()))
            .collect();
        assert_eq!(
            decisions,
            [
                ("allowed.test", "allow"),
                ("allowed.test", "allow"),
                ("other.test", "deny"),
                ("other.test", "deny"),
                ("allowed.test", "deny")
            ],
            "{audit}"
        );
        assert!(
            records
                .iter()
                .all(|r| r["tier"] == "userns" && r["session"].is_string()),
            "{audit}"
        );
        assert_eq!(records[1]["scheme"], "https");
        assert_eq!(records[3]["scheme"], "tls");
    }
}

/// Test addresses on the host's `lo` (outside 127.0.0.0/8 and `::1`), removed on drop: "other
/// addresses" of the caller's network namespace that a jailed process must not reach.
struct HostAddress {
    v4: String,
    v6: String,
}

impl HostAddress {
    fn new() -> HostAddress {
        let n = common::rand_u32() % 200 + 20;
        let h = HostAddress {
            v4: format!("198.51.100.{n}"),
            v6: format!("fd99:b0::{n:x}"),
        };
        for args in [
            vec!["addr", "add", &format!("{}/32", h.v4), "dev", "lo"],
            vec![
                "-6",
                "addr",
                "add",
                &format!("{}/128", h.v6),
                "dev",
                "lo",
                "nodad",
            ],
        ] {
            let st = std::process::Command::new("ip")
                .args(&args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        h
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.v4), "dev", "lo"])
            .status();
        let _ = std::process::Command::new("ip")
            .args([
                "-6",
                "addr",
                "del",
                &format!("{}/128", self.v6),
                "dev",
                "lo",
            ])
            .status();
    }
}

#[tokio::test]
async fn escapes_through_udp_tcp_ipv6_and_dns_fail() {
    require_root();
    let host = HostAddress::new();
    // Listeners in the caller's network namespace: loopback and another address, v4 and v6.
    let tcp4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_other = std::net::TcpListener::bind(format!("{}:0", host.v4)).unwrap();
    let tcp6 = std::net::TcpListener::bind(format!("[{}]:0", host.v6)).unwrap();
    let udp4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_other = std::net::UdpSocket::bind(format!("{}:0", host.v4)).unwrap();
    let udp6 = std::net::UdpSocket::bind(format!("[{}]:0", host.v6)).unwrap();
    let dns = std::net::UdpSocket::bind(format!("{}:53", host.v4)).unwrap();
    for l in [&tcp4, &tcp_other, &tcp6] {
        l.set_nonblocking(true).unwrap();
    }
    for s in [&udp4, &udp_other, &udp6, &dns] {
        s.set_nonblocking(true).unwrap();
    }
    let script = format!(
        r#"{PY} - <<'EOF'
import socket
def tcp(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    try:
        s.connect(addr); s.sendall(b"hello\n"); data = s.recv(100)
        return "connected:" + repr(data[:40])
    except Exception as e:
        return "refused:" + type(e).__name__
def udp(fam, addr):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.sendto(b"leak", addr); return "sent"
    except Exception as e:
        return "refused:" + type(e).__name__
print("tcp-lo", tcp(socket.AF_INET, ("127.0.0.1", {t4})))
print("tcp-other", tcp(socket.AF_INET, ("{v4}", {to})))
print("tcp6", tcp(socket.AF_INET6, ("{v6}", {t6})))
print("udp-lo", udp(socket.AF_INET, ("127.0.0.1", {u4})))
print("udp-other", udp(socket.AF_INET, ("{v4}", {uo})))
print("udp6", udp(socket.AF_INET6, ("{v6}", {u6})))
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04leak\x07example\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(q, ("{v4}", 53))
r = s.recv(512)
print("dns-answer", ".".join(str(b) for b in r[-4:]))
EOF
getent hosts some.host.example"#,
        t4 = tcp4.local_addr().unwrap().port(),
        to = tcp_other.local_addr().unwrap().port(),
        t6 = tcp6.local_addr().unwrap().port(),
        u4 = udp4.local_addr().unwrap().port(),
        uo = udp_other.local_addr().unwrap().port(),
        u6 = udp6.local_addr().unwrap().port(),
        v4 = host.v4,
        v6 = host.v6,
    );
    for who in [As::Nobody, As::Root] {
        let out = jailed(who, &[], &script).await;
        let text = stdout(&out);
        assert!(out.status.success(), "{who:?}: {}\n{text}", stderr(&out));
        assert!(
            text.contains("tcp-lo refused:ConnectionRefusedError"),
            "{who:?}: loopback is the jail's own:\n{text}"
        );
        assert!(
            text.contains("tcp-other connected:b''"),
            "{who:?}: closed by the proxy, not the host:\n{text}"
        );
        assert!(text.contains("tcp6 connected:b''"), "{who:?}:\n{text}");
        for line in ["udp-other", "udp6"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(line) && l.contains("refused")),
                "{who:?}: {line} has nowhere to go:\n{text}"
            );
        }
        assert!(
            text.contains("dns-answer 198.18."),
            "{who:?}: DNS answered by the jail:\n{text}"
        );
        assert!(
            text.contains("198.18."),
            "{who:?}: the system resolver asks the jail:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
        for (name, l) in [("tcp4", &tcp4), ("tcp-other", &tcp_other), ("tcp6", &tcp6)] {
            assert!(
                l.accept().is_err(),
                "{who:?}: {name} received a connection from the jail"
            );
        }
        let mut buf = [0u8; 64];
        for (name, s) in [
            ("udp4", &udp4),
            ("udp-other", &udp_other),
            ("udp6", &udp6),
            ("dns", &dns),
        ] {
            assert!(
                s.recv_from(&mut buf).is_err(),
                "{who:?}: {name} received a datagram from the jail"
            );
        }
    }
}

/// The jail's DNS as real clients use it: glibc forward and reverse lookups (UDP), and a raw
/// query over TCP with an EDNS record and mixed case, read back field by field.
#[tokio::test]
async fn the_jails_dns_answers_glibc_and_tcp_clients() {
    require_root();
    let script = format!(
        r#"{PY} - <<'EOF'
import socket, struct
ip = socket.gethostbyname("first.example")
print("forward", ip)
print("reverse", socket.gethostbyaddr(ip)[0])
print("unknown-reverse", end=" ")
try:
    socket.gethostbyaddr("198.18.200.200"); print("answered")
except socket.herror:
    print("not-found")
question = b"\x06Second\x07Example\x00" + struct.pack(">HH", 1, 1)
query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 1) + question
query += b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)
s = socket.create_connection(("192.0.2.53", 53), timeout=3)
s.sendall(struct.pack(">H", len(query)) + query)
size = struct.unpack(">H", s.recv(2))[0]
reply = b""
while len(reply) < size:
    reply += s.recv(size - len(reply))
ident, flags, qd, an = struct.unpack(">HHHH", reply[:8])
print("tcp", hex(ident), hex(flags), qd, an)
print("tcp-question", reply[12:12 + len(question)] == question)
print("tcp-answer", ".".join(str(b) for b in reply[-4:]))
EOF"#
    );
    for who in [As::Nobody, As::Root] {
        let out = jailed(who, &[], &script).await;
        let text = stdout(&out);
        assert!(out.status.success(), "{who:?}: {}\n{text}", stderr(&out));
        for line in [
            "forward 198.18.0.1",
            "reverse first.example",
            "unknown-reverse not-found",
            // Id echoed; QR, RD copied, RA; one question, one answer.
            "tcp 0x4242 0x8180 1 1",
            "tcp-question True",
            "tcp-answer 198.18.0.2",
        ] {
            assert!(text.lines().any(|l| l == line), "{who:?}: {line}:\n{text}");
        }
    }
}

/// Unmounts a path on drop.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn the_jail_cannot_change_its_firewall_routes_or_enter_other_namespaces() {
    require_root();
    // A handle on the caller's network namespace inside the jail's view.
    let dir = TempDir::new("netns");
    let handle = dir.path().join("host-netns");
    std::fs::write(&handle, b"").unwrap();
    let st = std::process::Command::new("mount")
        .args(["--bind", "/proc/self/ns/net"])
        .arg(&handle)
        .status()
        .unwrap();
    assert!(st.success());
    let _unmount = Unmount(handle.clone());
    let http = TestServer::start(None).await;
    let script = format!(
        "nft flush ruleset 2>&1; echo nft=$?; \
         ip route del default 2>&1; ip -6 route del default 2>&1; ip link set lo down 2>&1; \
         ip link add x type dummy 2>&1; \
         nsenter --net={h} true 2>&1; echo nsenter=$?; \
         unshare -n true 2>&1; echo unshare=$?; \
         curl -sS -o /dev/null -w 'after=%{{http_code}}\\n' http://denied.test:{p}/",
        h = handle.display(),
        p = http.port()
    );
    for who in [As::Nobody, As::Root] {
        let out = jailed(who, &["--resolve", "denied.test=127.0.0.1"], &script).await;
        let text = stdout(&out);
        assert!(text.contains("Operation not permitted"), "{who:?}:\n{text}");
        assert!(
            text.contains("nft=1"),
            "{who:?}: flushing the jail's ruleset failed:\n{text}"
        );
        assert!(
            !text.contains("nsenter=0"),
            "{who:?}: entered the caller's network namespace:\n{text}"
        );
        assert!(
            text.contains("after=403"),
            "{who:?}: the firewall still holds:\n{text}\n{}",
            stderr(&out)
        );
        assert_eq!(http.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
    // The privileged tier starts with SYS_ADMIN and NET_ADMIN and must have dropped them too.
    let out = jailed(
        As::Root,
        &[
            "--tier",
            "privileged-netns",
            "--resolve",
            "denied.test=127.0.0.1",
        ],
        &script,
    )
    .await;
    let text = stdout(&out);
    assert!(
        !text.contains("nsenter=0") && text.contains("after=403"),
        "privileged-netns:\n{text}"
    );
}

#[tokio::test]
async fn raw_sockets_signals_and_ptrace_do_not_reach_outside() {
    require_root();
    let script = format!(
        r#"{PY} - <<'EOF'
import socket, ctypes, os
for fam, kind, proto, name in [(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, "raw"), (socket.AF_PACKET, socket.SOCK_RAW, 0, "packet")]:
    try:
        socket.socket(fam, kind, proto); print(name, "opened")
    except PermissionError:
        print(name, "denied")
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(16, 1, 0, 0)
print("ptrace-init", r, os.strerror(ctypes.get_errno()))
EOF
sleep 30 & kill -KILL -1; echo killed-all=$?"#
    );
    let out = jailed(As::Nobody, &[], &script).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(
        text.contains("raw denied") && text.contains("packet denied"),
        "{text}"
    );
    assert!(
        text.contains("ptrace-init -1 Operation not permitted"),
        "{text}"
    );
    assert!(
        text.contains("killed-all=0"),
        "kill -1 only reaches the jail's own processes:\n{text}"
    );
}

#[tokio::test]
async fn exit_codes_stdin_and_setup_failures() {
    require_root();
    assert_eq!(
        jailed(As::Nobody, &[], "exit 42").await.status.code(),
        Some(42)
    );
    assert_eq!(
        jailed(As::Nobody, &[], "kill -9 $$").await.status.code(),
        Some(137)
    );
    let mut cmd = boundary(As::Nobody);
    cmd.args(["run", "--", "/nonexistent/agent"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("command not found"),
        "{}",
        stderr(&out)
    );
    let dir = TempDir::new("noexec");
    let file = dir.path().join("not-executable");
    std::fs::write(&file, "data").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut cmd = boundary(As::Nobody);
    cmd.arg("run").arg("--").arg(&file);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    // Jail set-up failure is 125, with the fix in words.
    let out = jailed(As::Nobody, &["--tier", "privileged-netns"], "true").await;
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("CAP_SYS_ADMIN") && stderr(&out).contains("securityContext"),
        "{}",
        stderr(&out)
    );
    // Bad flags are 2.
    let out = jailed(As::Nobody, &["--allow", "metod=GET"], "true").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did you mean `method`"),
        "{}",
        stderr(&out)
    );
    // stdin passes through.
    let mut cmd = boundary(As::Nobody);
    cmd.args(["run", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().unwrap(), b"through the jail\n")
        .await
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the jail\n");
}

/// Root whose capabilities were dropped (a container with `drop: [ALL]`) cannot map uid 0 into
/// a user namespace since Linux 5.12; the init's own error must reach the caller, with the fix.
#[tokio::test]
async fn root_without_setfcap_is_told_why_the_userns_tier_fails() {
    require_root();
    let out = output({
        let mut c = tokio::process::Command::new("setpriv");
        c.args([
            "--bounding-set",
            "-setfcap,-sys_admin,-net_admin",
            "--inh-caps=-all",
            "--",
        ])
        .arg(common::boundary_bin())
        .args(["run", "--tier", "userns", "--", "true"]);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("CAP_SETFCAP") && err.contains("runAsUser") && err.contains("SETFCAP"),
        "{err}"
    );
}

#[tokio::test]
async fn user_namespaces_switched_off_give_the_sysctl_and_the_other_tier() {
    require_root();
    // A user namespace whose max_user_namespaces is 0, like a Bottlerocket node.
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && {} run --tier userns -- true",
        common::boundary_bin()
    );
    let out = output({
        let mut c = tokio::process::Command::new("unshare");
        c.args(["--user", "--map-root-user", "sh", "-c", &script]);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("user.max_user_namespaces") && err.contains("privileged-netns"),
        "{err}"
    );
}

#[tokio::test]
async fn signals_are_forwarded_and_a_tty_passes_through() {
    require_root();
    let mut cmd = boundary(As::Nobody);
    cmd.args([
        "run",
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
    ])
    .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(line, "ready\n");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out, &mut rest)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7), "{rest}");
    assert!(rest.contains("got-term"), "{rest}");

    // A TTY: `script` gives boundary a pseudo-terminal; the jailed command sees it.
    let out = output({
        let mut c = tokio::process::Command::new("script");
        c.args([
            "-qec",
            &format!("{} run -- tty", common::boundary_bin()),
            "/dev/null",
        ]);
        c
    })
    .await;
    assert!(
        stdout(&out).contains("/dev/pts/"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Host state a jail could leave behind: interfaces, nftables tables, mounts.
fn host_state() -> (String, String, usize) {
    let run = |cmd: &[&str]| {
        String::from_utf8_lossy(
            &std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    let links = run(&["ip", "-o", "link"])
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(",");
    let tables = run(&["nft", "list", "tables"]);
    // Namespace handles (`nsfs`) are left out: another test of this binary bind-mounts one for
    // a moment, and a jail never mounts anything in the caller's namespace.
    let mounts = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(2) != Some("nsfs"))
        .count();
    (links, tables, mounts)
}

/// `boundary run`'s work directories of process `pid`, wherever it may make them.
fn workdirs_of(pid: i32) -> Vec<String> {
    [std::path::PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("boundary-{pid}-")))
        .collect()
}

/// Processes whose argv is exactly `argv` (space-separated).
fn pids_of(argv: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .replace('\0', " ")
            == argv
        {
            out.push(pid);
        }
    }
    out
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}");
}

/// The init hands the command's exit code back before the jail's namespaces are torn down only
/// when nothing else runs in the jail: with a background process left, `boundary run` waits
/// for the init as before, so that process is gone by the time `boundary run` has exited.
#[tokio::test]
async fn the_exit_code_comes_back_early_only_from_an_empty_jail() {
    require_root();
    let marker = format!(
        "{}.{}",
        5000 + common::rand_u32() % 1000,
        common::rand_u32() % 1000
    );
    let out = jailed(As::Root, &[], &format!("sleep {marker} & exit 3")).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        pids_of(&format!("sleep {marker}")).is_empty(),
        "a process left in the jail is gone when boundary run has exited"
    );
    // From an empty jail (the early hand-off): exit codes and deaths by signal as before.
    for (script, code) in [("exit 5", 5), ("kill -TERM $$", 143), ("true", 0)] {
        let out = jailed(As::Nobody, &[], script).await;
        assert_eq!(out.status.code(), Some(code), "{script}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn sigkill_of_any_jail_process_leaves_nothing_behind() {
    require_root();
    let before = host_state();
    for victim in ["supervisor", "init", "command"] {
        let marker = format!(
            "{}.{}",
            4000 + common::rand_u32() % 1000,
            common::rand_u32() % 1000
        );
        let mut cmd = boundary(As::Root);
        cmd.args(["run", "--", "sleep", &marker]);
        let mut child = cmd.spawn().unwrap();
        let supervisor = i32::try_from(child.id().unwrap()).unwrap();
        wait_until("the jailed sleep started", || {
            pids_of(&format!("sleep {marker}")).len() == 1
        })
        .await;
        let init =
            std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<i32>()
                .unwrap();
        let target = match victim {
            "supervisor" => supervisor,
            "init" => init,
            _ => pids_of(&format!("sleep {marker}"))[0],
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        if victim != "supervisor" {
            assert_eq!(
                status.code(),
                Some(137),
                "killing the {victim} ends boundary run with 128+9"
            );
        }
        wait_until(&format!("{victim}: jail processes gone"), || {
            pids_of(&format!("sleep {marker}")).is_empty()
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), None).is_err()
        })
        .await;
        assert_eq!(
            host_state(),
            before,
            "{victim}: interfaces, nftables tables or mounts left behind"
        );
        if victim == "supervisor" {
            // A killed supervisor cannot remove its own temp dir; the next run does.
            let out = common::jailed(As::Root, &[], "true").await;
            assert!(out.status.success());
        }
        assert!(
            workdirs_of(supervisor).is_empty(),
            "{victim}: files left behind: {:?}",
            workdirs_of(supervisor)
        );
    }
}

#[tokio::test]
async fn the_ruleset_lives_in_the_jail_and_redirects_everything() {
    require_root();
    let mut cmd = boundary(As::Root);
    // As many pod-local ports as a jail takes (several netlink batches); 5432 is the last.
    let ports: Vec<String> = (5177..=5432).map(|p| p.to_string()).collect();
    cmd.args([
        "run",
        "--tier",
        "userns",
        "--pod-local-port",
        &ports.join(","),
    ])
    .args(["--", "sleep", "4242.5"]);
    let mut child = cmd.spawn().unwrap();
    wait_until("jail up", || pids_of("sleep 4242.5").len() == 1).await;
    let jailed = pids_of("sleep 4242.5")[0];
    let out = std::process::Command::new("nsenter")
        .args(["-t", &jailed.to_string(), "-n", "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        rules.contains("priority -100") || rules.contains("priority dstnat"),
        "{rules}"
    );
    for expected in [
        "table inet agent_boundary",
        "type nat hook output priority ",
        "udp dport 53 redirect to :53",
        "tcp dport 53 redirect to :53",
        "ip daddr 127.0.0.0/8 accept",
        "ip6 daddr ::1 accept",
        "ip daddr 127.0.0.0/8 tcp dport 5432 redirect to :2",
        "ip6 daddr ::1 tcp dport 5432 redirect to :2",
        "meta l4proto tcp redirect to :2",
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx admin-prohibited",
    ] {
        assert!(rules.contains(expected), "missing {expected:?} in\n{rules}");
    }
    assert_eq!(
        rules
            .lines()
            .filter(|l| l.contains("tcp dport") && l.trim_end().ends_with("redirect to :2"))
            .count(),
        2 * 256,
        "one rule per pod-local port and family:\n{rules}"
    );
    let at = |text: &str| rules.find(text).unwrap();
    assert!(
        at("tcp dport 5432 redirect") < at("ip daddr 127.0.0.0/8 accept"),
        "a pod-local port is redirected before loopback is accepted:\n{rules}"
    );
    let host = String::from_utf8_lossy(
        &std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !host.contains("agent_boundary"),
        "nothing in the caller's namespace"
    );
    child.kill().await.unwrap();
}

/// A sidecar of the pod on loopback outside the jail: says `ready`, then echoes; counts clients.
fn host_echo_server(ip: &str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = stream.write_all(b"ready\n");
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, hits)
}

#[tokio::test]
async fn pod_local_ports_reach_the_loopback_outside_only_when_allowed() {
    require_root();
    let (allowed, allowed_hits) = host_echo_server("127.0.0.1");
    let (ipv6_port, ipv6_hits) = host_echo_server("::1");
    let (denied, denied_hits) = host_echo_server("127.0.0.1");
    // Not a pod-local port: inside the jail this port is the jail's own.
    let (own, own_hits) = host_echo_server("127.0.0.1");
    let script = format!(
        r#"{PY} - <<'EOF'
import socket, threading
def talk(addr, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(5)
    try:
        s.connect(addr); banner = s.recv(100); s.sendall(b"ping\n"); echo = s.recv(100)
        return "got:" + repr(banner + echo)
    except Exception as e:
        return "refused:" + type(e).__name__
    finally:
        s.close()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", {own})); srv.listen(1)
def serve():
    c, _ = srv.accept(); c.sendall(b"jail\n"); c.sendall(c.recv(100)); c.close()
threading.Thread(target=serve, daemon=True).start()
print("allowed", talk(("127.0.0.1", {allowed})))
print("ipv6", talk(("::1", {ipv6_port}), socket.AF_INET6))
print("denied", talk(("127.0.0.1", {denied})))
print("own", talk(("127.0.0.1", {own})))
EOF"#
    );
    for (who, tier) in [
        (As::Root, "userns"),
        (As::Nobody, "userns"),
        (As::Root, "privileged-netns"),
    ] {
        let audit = TempDir::new("audit");
        let audit_file = audit.path().join("audit.jsonl");
        let (before_allowed, before_ipv6, before_denied) = (
            allowed_hits.load(std::sync::atomic::Ordering::SeqCst),
            ipv6_hits.load(std::sync::atomic::Ordering::SeqCst),
            denied_hits.load(std::sync::atomic::Ordering::SeqCst),
        );
        let mut cmd = boundary(who);
        cmd.args(["run", "--tier", tier, "--allow-pod-local"])
            .arg(format!("{allowed},{ipv6_port}"))
            .args(["--audit-file", audit_file.to_str().unwrap()])
            // Redirected (as the webhook does for the pod's declared ports) but not allowed.
            .env("BOUNDARY_POD_LOCAL_PORTS", denied.to_string())
            .args(["--", "sh", "-c", &script]);
        let out = output(cmd).await;
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "{who:?}/{tier}: {}\n{text}",
            stderr(&out)
        );
        assert!(
            text.contains(r"allowed got:b'ready\nping\n'"),
            "{who:?}/{tier}: the allowed pod-local port answers through the proxy:\n{text}"
        );
        assert!(
            text.contains(r"ipv6 got:b'ready\nping\n'"),
            "{who:?}/{tier}: over IPv6 too:\n{text}"
        );
        assert!(
            text.contains("denied refused:") || text.contains("denied got:b''"),
            "{who:?}/{tier}: the redirected but not allowed port is closed:\n{text}"
        );
        assert!(
            text.contains(r"own got:b'jail\nping\n'"),
            "{who:?}/{tier}: the jail's own loopback server keeps working:\n{text}"
        );
        assert_eq!(
            allowed_hits.load(std::sync::atomic::Ordering::SeqCst) - before_allowed,
            1,
            "{who:?}/{tier}"
        );
        assert_eq!(
            ipv6_hits.load(std::sync::atomic::Ordering::SeqCst) - before_ipv6,
            1,
            "{who:?}/{tier}"
        );
        assert_eq!(
            denied_hits.load(std::sync::atomic::Ordering::SeqCst),
            before_denied,
            "{who:?}/{tier}: the denied port was never reached"
        );
        assert_eq!(own_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        let audit = std::fs::read_to_string(&audit_file).unwrap();
        assert_pod_local_audit(
            &format!("{who:?}/{tier}"),
            &audit,
            tier,
            [allowed, ipv6_port],
            denied,
        );
    }
}

/// The audit trail of a jail that reached `allowed` pod-local ports and was refused `denied`.
fn assert_pod_local_audit(context: &str, audit: &str, tier: &str, allowed: [u16; 2], denied: u16) {
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The denial is recorded at once, an allowed connection when it closes.
    let mut pod_local: Vec<(u64, &str)> = records
        .iter()
        .filter(|r| r["scheme"] == "pod-local")
        .map(|r| (r["port"].as_u64().unwrap(), r["decision"].as_str().unwrap()))
        .collect();
    pod_local.sort_unstable();
    let mut expected = vec![(u64::from(denied), "deny")];
    expected.extend(allowed.iter().map(|p| (u64::from(*p), "allow")));
    expected.sort_unstable();
    assert_eq!(pod_local, expected, "{context}: {audit}");
    for r in records.iter().filter(|r| r["decision"] == "allow") {
        assert_eq!(r["tier"], tier, "{context}: {audit}");
        assert_eq!(r["bytes_in"], 5, "{context}: {audit}");
        assert_eq!(r["bytes_out"], 11, "{context}: {audit}");
    }
    let deny = records.iter().find(|r| r["decision"] == "deny").unwrap();
    let reason = deny["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("--allow-pod-local {denied}")),
        "{context}: {reason}"
    );
}

/// The pod's path: the jail sends redirected pod-local ports to the sidecar's socket, and the
/// sidecar's policy (`spec.podLocal`) decides them.
#[tokio::test]
async fn in_a_pod_the_sidecars_policy_decides_the_pod_local_ports() {
    require_root();
    let (allowed, allowed_hits) = host_echo_server("127.0.0.1");
    let (denied, denied_hits) = host_echo_server("127.0.0.1");
    let policy = serde_json::json!({
        "version": 1,
        "namespace": "agents",
        "policies": [{
            "name": "agent-policy",
            "podSelector": {},
            "podLocal": [{"ports": [allowed], "description": "echo"}]
        }]
    });
    let sidecar = common::Sidecar::start(&policy, &[]).await;
    let script = format!(
        r#"{PY} - <<'EOF'
import socket
for name, port in (("allowed", {allowed}), ("denied", {denied})):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port)); banner = s.recv(100); s.sendall(b"ping\n")
        print(name, "got:" + repr(banner + s.recv(100)))
    except Exception as e:
        print(name, "refused:" + type(e).__name__)
EOF"#
    );
    let ports = format!("{allowed},{denied}");
    let out = jailed(
        As::Nobody,
        &[
            "--proxy-socket",
            sidecar.socket.to_str().unwrap(),
            "--container",
            "agent",
            "--pod-local-port",
            &ports,
        ],
        &script,
    )
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(text.contains(r"allowed got:b'ready\nping\n'"), "{text}");
    assert!(
        text.contains("denied refused:") || text.contains("denied got:b''"),
        "{text}"
    );
    assert_eq!(allowed_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(denied_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let records = sidecar.audit().await;
    let allow = records
        .iter()
        .find(|r| r["scheme"] == "pod-local" && r["decision"] == "allow")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(
        allow["rule"],
        format!("agent-policy spec.podLocal[0]: podLocal ports={allowed} (echo)")
    );
    assert_eq!(allow["container"], "agent");
    assert_eq!(allow["tier"], "userns");
    let deny = records
        .iter()
        .find(|r| r["scheme"] == "pod-local" && r["decision"] == "deny")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(deny["port"], denied);
    assert!(
        deny["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("spec.podLocal: [{{ports: [{denied}]}}]")),
        "{deny}"
    );
}
