//! Presets with the real `boundary` binary: `boundary presets list/show` print what the README
//! shows, and `boundary run --preset github-read-only` lets a real `git` clone and fetch over
//! smart HTTP while `git push` is refused. The server standing in for github.com is Debian's
//! `git http-backend` behind a loopback HTTPS server (a small CGI bridge in python3). Real `pip`
//! and `npm` install a package through `--preset pypi --preset npm` from a static loopback
//! server standing in for the index and the registry, and writes to them are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use boundary_test_kit::TestCa;
use common::{As, TempDir, boundary, jailed, output, require_root, stderr, stdout};

/// The README's block for `name` (between "`name`:" and the end of its YAML block).
fn readme_block(readme: &str, name: &str) -> String {
    let start = readme
        .find(&format!("`{name}`:\n\n```yaml\n"))
        .unwrap_or_else(|| panic!("the README shows no preset {name}"));
    let body = &readme[start..];
    let body = &body[body.find("```yaml\n").unwrap() + "```yaml\n".len()..];
    body[..body.find("```").unwrap()].to_owned()
}

#[tokio::test]
async fn presets_list_and_show_print_what_the_readme_shows() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut cmd = boundary(As::Root);
    cmd.args(["presets", "list"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    let names: Vec<&str> = list
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for required in [
        "claude-code",
        "codex",
        "github-read-only",
        "github",
        "npm",
        "pypi",
        "crates",
        "go-modules",
        "debian",
    ] {
        assert!(
            names.contains(&required),
            "{required} missing from:\n{list}"
        );
    }
    for name in names {
        let mut cmd = boundary(As::Root);
        cmd.args(["presets", "show", name]);
        let out = output(cmd).await;
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), readme_block(&readme, name), "{name}");
    }
    let mut cmd = boundary(As::Root);
    cmd.args(["presets", "show", "gitlab"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown preset \"gitlab\"; the presets are: claude-code, codex"),
        "{}",
        stderr(&out)
    );
    // `boundary run` refuses an unknown preset before running anything, naming its place.
    let out = jailed(As::Root, &["--preset", "npm,gitlab"], "echo ran").await;
    assert!(!out.status.success());
    assert!(!stdout(&out).contains("ran"));
    assert!(
        stderr(&out).contains("--preset[1]: unknown preset \"gitlab\""),
        "{}",
        stderr(&out)
    );
}

/// A loopback HTTPS server running `git http-backend` for each request (CGI), logging
/// `METHOD PATH?QUERY` lines to `LOG`. Prints its port, then serves until killed.
const GIT_SERVER: &str = r#"
import http.server, os, ssl, subprocess, sys
root, cert, key, log = sys.argv[1:5]

class Git(http.server.BaseHTTPRequestHandler):
    def handle_one(self):
        path, _, query = self.path.partition("?")
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path}\n")
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(length)
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_USER": "tester",
        }
        for name in ("Content-Encoding", "Git-Protocol"):
            if self.headers.get(name):
                env["HTTP_" + name.upper().replace("-", "_")] = self.headers[name]
        out = subprocess.run(["/usr/lib/git-core/git-http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = handle_one

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Git)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Runs git outside the jail (setting up and checking the server's repository).
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A python3 server; killed when dropped.
struct PythonServer {
    child: std::process::Child,
    port: u16,
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The "GitHub" repository `srv/octo/hello.git` with one commit, which would accept a push
/// (`http.receivepack`) if one reached it: only the proxy stands in the way. Returns it and a
/// clone outside the jail to add commits with.
fn seed_repository(dir: &Path) -> (PathBuf, PathBuf) {
    let srv = dir.join("srv/octo");
    std::fs::create_dir_all(&srv).unwrap();
    git(&srv, &["init", "-q", "--bare", "-b", "main", "hello.git"]);
    let bare = srv.join("hello.git");
    git(&bare, &["config", "http.receivepack", "true"]);
    let seed = dir.join("seed");
    git(
        dir,
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            seed.to_str().unwrap(),
        ],
    );
    std::fs::write(seed.join("README"), "one\n").unwrap();
    git(&seed, &["add", "README"]);
    git(&seed, &["commit", "-q", "-m", "one"]);
    git(&seed, &["push", "-q", "origin", "main"]);
    (bare, seed)
}

#[tokio::test]
async fn git_clones_and_fetches_through_github_read_only_and_a_push_is_refused() {
    require_root();
    let dir = TempDir::new("preset-git");
    let ca = TestCa::new();
    let (bare, seed) = seed_repository(dir.path());
    let log = dir.path().join("requests.log");
    let srv = dir.path().join("srv");
    let server = start_python_server(
        dir.path(),
        &ca,
        &["github.com"],
        GIT_SERVER,
        &[&srv],
        &[&log],
    );
    let audit_file = dir.path().join("audit.jsonl");
    let url = format!("https://github.com:{}/octo/hello.git", server.port);
    let args = [
        "--preset",
        "github-read-only",
        "--resolve",
        "github.com=127.0.0.1",
        "--upstream-ca",
        ca.pem_path.to_str().unwrap(),
        "--audit-file",
        audit_file.to_str().unwrap(),
    ];
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
    let env = format!(
        "export HOME={w} GIT_TERMINAL_PROMPT=0; cd {w}",
        w = work.display()
    );

    // Clone.
    let out = jailed(
        As::Nobody,
        &args,
        &format!("{env} && git clone -q {url} hello && cat hello/README"),
    )
    .await;
    assert!(out.status.success(), "clone: {}", stderr(&out));
    assert_eq!(stdout(&out), "one\n");

    // A new commit upstream, then fetch.
    std::fs::write(seed.join("README"), "two\n").unwrap();
    git(&seed, &["commit", "-q", "-am", "two"]);
    git(&seed, &["push", "-q", "origin", "main"]);
    let upstream_head = git(&bare, &["rev-parse", "main"]);
    let out = jailed(
        As::Nobody,
        &args,
        &format!("{env}/hello && git fetch -q origin && git rev-parse origin/main"),
    )
    .await;
    assert!(out.status.success(), "fetch: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), upstream_head);

    // Push: refused by the proxy; the repository is unchanged and never saw a receive-pack.
    let out = jailed(
        As::Nobody,
        &args,
        &format!(
            "{env}/hello && git merge -q --ff-only origin/main && git -c user.name=a -c \
             user.email=a@example.com commit -q --allow-empty -m exfiltrate && git push origin \
             HEAD:main"
        ),
    )
    .await;
    assert!(!out.status.success(), "the push went through");
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    assert_eq!(git(&bare, &["rev-parse", "main"]), upstream_head);
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(
        requests.contains("GET /octo/hello.git/info/refs?service=git-upload-pack")
            && requests.contains("POST /octo/hello.git/git-upload-pack"),
        "{requests}"
    );
    assert!(!requests.contains("git-receive-pack"), "{requests}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied = records
        .iter()
        .find(|r| r["decision"] == "deny")
        .unwrap_or_else(|| panic!("no deny record in {records:#?}"));
    assert_eq!(denied["denied_by"], "deny-rule", "{denied:#}");
    // The push's first request (its ref advertisement) is refused already.
    assert_eq!(denied["method"], "GET", "{denied:#}");
    assert_eq!(
        denied["rule"],
        "--preset[0] (github-read-only): domains=github.com paths=/*/*/info/refs \
         query=service:git-receive-pack"
    );
    let allowed = records
        .iter()
        .find(|r| r["decision"] == "allow" && r["method"] == "POST")
        .unwrap_or_else(|| panic!("no allowed upload-pack in {records:#?}"));
    assert_eq!(
        allowed["rule"],
        "--preset[0] (github-read-only): domain=github.com method=POST path=/*/*/git-upload-pack"
    );
}

/// A loopback HTTPS server of static files standing in for pypi.org, files.pythonhosted.org and
/// registry.npmjs.org (one certificate for all three). Once bound it writes its fixtures under
/// ROOT: a PEP 503 index with one wheel, and an npm packument with one tarball, whose URLs carry
/// its port. Prints the port, then serves until killed.
const PACKAGE_SERVER: &str = r#"
import base64, functools, hashlib, http.server, io, json, os, ssl, sys, tarfile, zipfile
root, cert, key = sys.argv[1:4]

class Files(http.server.SimpleHTTPRequestHandler):
    def guess_type(self, path):
        return "application/json" if path.endswith("/hello-preset") else super().guess_type(path)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Files, directory=root))
port = server.server_address[1]

wheel = io.BytesIO()
with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("hello_preset/__init__.py", "GREETING = 'hello from the index'\n")
    info = "hello_preset-1.0.dist-info/"
    z.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: hello-preset\nVersion: 1.0\n")
    z.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(info + "RECORD", f"hello_preset/__init__.py,,\n{info}METADATA,,\n{info}WHEEL,,\n{info}RECORD,,\n")
name = "hello_preset-1.0-py3-none-any.whl"
os.makedirs(f"{root}/packages", exist_ok=True)
open(f"{root}/packages/{name}", "wb").write(wheel.getvalue())
digest = hashlib.sha256(wheel.getvalue()).hexdigest()
os.makedirs(f"{root}/simple/hello-preset", exist_ok=True)
open(f"{root}/simple/hello-preset/index.html", "w").write(
    f'<html><body><a href="https://files.pythonhosted.org:{port}/packages/{name}#sha256={digest}">{name}</a></body></html>')

tgz = io.BytesIO()
with tarfile.open(fileobj=tgz, mode="w:gz") as t:
    for path, text in [("package/package.json", '{"name":"hello-preset","version":"1.0.0","main":"index.js"}'),
                       ("package/index.js", "module.exports = 'hello from the registry';\n")]:
        data = text.encode()
        entry = tarfile.TarInfo(path)
        entry.size = len(data)
        entry.mode = 0o644
        t.addfile(entry, io.BytesIO(data))
os.makedirs(f"{root}/tarballs", exist_ok=True)
open(f"{root}/tarballs/hello-preset-1.0.0.tgz", "wb").write(tgz.getvalue())
dist = {"tarball": f"https://registry.npmjs.org:{port}/tarballs/hello-preset-1.0.0.tgz",
        "shasum": hashlib.sha1(tgz.getvalue()).hexdigest(),
        "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tgz.getvalue()).digest()).decode()}
version = {"name": "hello-preset", "version": "1.0.0", "main": "index.js", "dist": dist}
open(f"{root}/hello-preset", "w").write(json.dumps(
    {"name": "hello-preset", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}))

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(port, flush=True)
server.serve_forever()
"#;

/// Starts `script` (python3) with `args` and the paths of a leaf certificate for `names`; reads
/// the port it prints.
fn start_python_server(
    dir: &Path,
    ca: &TestCa,
    names: &[&str],
    script: &str,
    args: &[&Path],
    tail: &[&Path],
) -> PythonServer {
    let leaf = ca.leaf(names);
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .args(args)
        .args([&cert, &key])
        .args(tail)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the server did not start: {line:?}")
    });
    PythonServer { child, port }
}

#[tokio::test]
async fn pip_and_npm_install_through_their_presets_and_cannot_write() {
    require_root();
    let dir = TempDir::new("preset-packages");
    let ca = TestCa::new();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let hosts = ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org"];
    let server = start_python_server(dir.path(), &ca, &hosts, PACKAGE_SERVER, &[&root], &[]);
    let port = server.port;
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
    let mut args: Vec<String> = ["--preset", "pypi", "--preset", "npm", "--upstream-ca"]
        .map(str::to_owned)
        .to_vec();
    args.push(ca.pem_path.to_str().unwrap().to_owned());
    for host in hosts {
        args.extend(["--resolve".to_owned(), format!("{host}=127.0.0.1")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let script = format!(
        "export HOME={w}; cd {w} && \
         /usr/bin/python3 -m pip install -q --disable-pip-version-check --no-cache-dir \
           --index-url https://pypi.org:{port}/simple/ --target {w}/py hello-preset && \
         PYTHONPATH={w}/py /usr/bin/python3 -c 'import hello_preset; print(hello_preset.GREETING)' && \
         npm install --silent --no-audit --no-fund --no-update-notifier --cache {w}/npm-cache \
           --registry https://registry.npmjs.org:{port}/ hello-preset && \
         node -e 'console.log(require(\"hello-preset\"))' && \
         curl -sS -X PUT --data x https://registry.npmjs.org:{port}/hello-preset && \
         curl -sS -X POST --data x https://pypi.org:{port}/legacy/",
        w = work.display()
    );
    let out = jailed(As::Nobody, &args, &script).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(
        text.starts_with("hello from the index\nhello from the registry\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "  - --preset[1] (npm): domain=registry.npmjs.org method=GET,HEAD: method not allowed"
        ),
        "the registry refuses a write:\n{text}"
    );
    assert!(
        text.contains(
            "  - --preset[0] (pypi): domain=pypi.org method=GET,HEAD: method not allowed"
        ),
        "the index refuses an upload:\n{text}"
    );
}
