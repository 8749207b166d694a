//! `boundary run`'s settings: flags, `BOUNDARY_*` environment variables and Coder's
//! `config.yaml`, merged with the precedence flags > environment > file (allow rules from all of
//! them are combined, as Coder does).

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use boundary_api::contract;
use boundary_api::credentials::Credential;
use boundary_api::policy_file::{self, FilePolicy, PolicyFile};
use boundary_api::rules::{self, CompileErrors, RuleSet, RuleSource};
use boundary_api::{HttpRule, Mode, PodLocalRule, Port, TcpRule, Tier};
use boundary_telemetry::{LogArgs, LogFormat};
use clap::Args;
use serde::Deserialize;

/// Flags of `boundary run` (also accepted without `run`: `boundary [FLAGS] -- CMD`).
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Allow rule in Coder's grammar (repeatable), e.g. "domain=github.com method=GET".
    /// From the environment: one rule per line.
    #[arg(
        long = "allow",
        value_name = "RULE",
        env = contract::boundary_env::ALLOW,
        value_delimiter = '\n'
    )]
    pub allow: Vec<String>,
    /// Deny rule in Coder's grammar (repeatable), e.g. "domain=pastebin.com": whatever it matches
    /// is denied, whatever allows it. TCP and TLS-passthrough connections are denied when it
    /// names their host and port (their method and path are not seen). From the environment: one
    /// rule per line.
    #[arg(
        long = "deny",
        value_name = "RULE",
        env = contract::env::DENY,
        value_delimiter = '\n'
    )]
    pub deny: Vec<String>,
    /// A preset: a named rule set maintained with this project (repeatable or comma-separated),
    /// e.g. `github-read-only`, `npm`, `claude-code`; `boundary presets list` names them all,
    /// `boundary presets show NAME` prints one's rules. Its deny rules win like --deny's.
    #[arg(
        long = "preset",
        value_name = "NAME",
        env = contract::boundary_env::PRESET,
        value_delimiter = ','
    )]
    pub presets: Vec<String>,
    /// A credential the proxy puts into requests to HOST, whose real value stays out of the
    /// jail (repeatable): 'domain=HOST env=VAR header=NAME [format=Bearer {value}]',
    /// 'domain=HOST env=VAR basic=USER' or 'domain=HOST sigv4' (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); optional name=, path=, method=, port=.
    /// The real value is read from VAR here; inside the jail VAR holds a placeholder. Requests
    /// carrying a placeholder or the value anywhere else are refused. From the environment: one
    /// spec per line.
    #[arg(
        long = "credential",
        value_name = "SPEC",
        env = contract::boundary_env::CREDENTIAL,
        value_delimiter = '\n'
    )]
    pub credentials: Vec<String>,
    /// Coder-compatible YAML config file (`allowlist`, `log_level`, `log_dir`, `proxy_port`,
    /// `jail_type`, `no_user_namespace`, ...; extensions: `tier`, `mode`, `deny`, `presets`,
    /// `http`, `tcp`, `resolve`, `upstream_ca`, `credentials`).
    #[arg(long, value_name = "FILE", env = contract::boundary_env::CONFIG)]
    pub config: Option<PathBuf>,
    /// `BoundaryPolicy` YAML, the file a cluster uses (repeatable or comma-separated; one or more
    /// documents; `ClusterBoundaryPolicy` documents too). Its rules join --allow, --deny and the
    /// config file's; the policies' modes combine as in a pod (Enforce beats Audit) unless
    /// --mode is given. Selectors and `jail` are ignored (every policy of the file applies);
    /// a credential's real value is read from the environment variable its `env` names.
    #[arg(
        long = "policy",
        value_name = "FILE",
        env = contract::boundary_env::POLICY,
        value_delimiter = ','
    )]
    pub policy: Vec<PathBuf>,
    /// Jail tier: auto (first that works), userns, privileged-netns or landlock.
    #[arg(long, value_name = "TIER", env = contract::env::TIER)]
    pub tier: Option<String>,
    /// Coder's jail type: nsjail (namespaces) or landjail (the landlock tier).
    #[arg(long, value_name = "TYPE", env = contract::env::CODER_JAIL_TYPE)]
    pub jail_type: Option<String>,
    /// Coder's switch for nodes without user namespaces: the privileged-netns tier.
    #[arg(long, env = contract::env::CODER_NO_USER_NAMESPACE, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub no_user_namespace: Option<bool>,
    /// Send traffic to the policy proxy on this unix socket (the jail-runtime sidecar) instead
    /// of running one in-process.
    #[arg(long, value_name = "PATH", env = contract::env::PROXY_SOCKET)]
    pub proxy_socket: Option<PathBuf>,
    /// Directory for the audit log (Coder's `log_dir`); default: standard error.
    #[arg(long, value_name = "DIR", env = contract::boundary_env::LOG_DIR)]
    pub log_dir: Option<PathBuf>,
    /// Turn the audit log off (Coder's `disable_audit_logs`).
    #[arg(long, env = contract::boundary_env::DISABLE_AUDIT_LOGS, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub disable_audit_logs: Option<bool>,
    /// Port of the explicit HTTP proxy (landlock tier); random when not set.
    #[arg(long, value_name = "PORT", env = contract::env::PROXY_PORT)]
    pub proxy_port: Option<u16>,
    /// Enforce (default) or Audit (allow everything, record what would be denied).
    #[arg(long, value_name = "MODE", env = contract::boundary_env::MODE)]
    pub mode: Option<String>,
    /// Allow TCP connections to PORT on the loopback outside the jail: the pod's sidecars (a
    /// database proxy, dind), or this host's own servers when run standalone (repeatable or
    /// comma-separated). The port is also redirected out of the jail (as --pod-local-port).
    #[arg(
        long = "allow-pod-local",
        value_name = "PORT",
        env = contract::boundary_env::ALLOW_POD_LOCAL,
        value_delimiter = ','
    )]
    pub allow_pod_local: Vec<String>,
    /// Loopback TCP ports that belong to the pod, not the jail (repeatable or comma-separated):
    /// connections to `127.0.0.1` or `::1` on them leave the jail for the proxy, which allows
    /// them only by a podLocal rule. Other loopback ports stay the jail's own. Set by the webhook.
    #[arg(
        long = "pod-local-port",
        value_name = "PORTS",
        env = contract::env::POD_LOCAL_PORTS,
        value_delimiter = ','
    )]
    pub pod_local_ports: Vec<String>,
    /// The container name recorded in audit records and used by the sidecar to pick rules.
    #[arg(long, value_name = "NAME", env = contract::env::CONTAINER_NAME)]
    pub container: Option<String>,
    /// Ports (comma-separated, repeatable) of servers in the jail to reach from outside: each
    /// is listened on in this network namespace (all addresses) and relayed to the jail's
    /// 127.0.0.1 on the same port.
    #[arg(
        long = "inbound-port",
        value_name = "PORTS",
        env = contract::env::INBOUND_PORTS,
        value_delimiter = ','
    )]
    pub inbound_ports: Vec<String>,
    /// Seconds to wait at the start for the sidecar's socket and CA (with --proxy-socket).
    #[arg(
        long,
        value_name = "SECONDS",
        env = contract::boundary_env::SIDECAR_WAIT_SECONDS,
        default_value_t = 60
    )]
    pub sidecar_wait_seconds: u64,
    /// Coder's `PROXY_PORT`, used when neither --proxy-port nor the config file sets the port.
    /// Not a flag of its own: a value that is not a port is ignored with a warning, since the
    /// name is generic enough to be set for something else.
    #[arg(long, hide = true, value_name = "PORT", env = contract::coder_env::PROXY_PORT)]
    pub coder_proxy_port: Option<String>,
    /// Settings shared with `boundary sidecar`.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Diagnostics.
    #[command(flatten)]
    pub log: LogArgs,
    /// The command to jail, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The policy proxy's settings, the same in `boundary run` (in-process proxy) and `boundary
/// sidecar`.
#[derive(Debug, Clone, Default, Args)]
pub struct ProxyArgs {
    /// Resolve HOST to IP in the proxy (repeatable; for tests and split-horizon setups).
    #[arg(
        long = "resolve",
        value_name = "HOST=IP",
        env = contract::boundary_env::RESOLVE,
        value_delimiter = ','
    )]
    pub resolve: Vec<String>,
    /// Extra CA certificate (PEM) trusted for upstream servers (repeatable).
    #[arg(
        long = "upstream-ca",
        value_name = "FILE",
        env = contract::boundary_env::UPSTREAM_CA,
        value_delimiter = ','
    )]
    pub upstream_ca: Vec<PathBuf>,
    /// DNS server (`ADDR` or `ADDR:PORT`, `[V6]:PORT`; port 53 by default) the proxy asks for
    /// upstream names instead of the system's resolver.
    #[arg(long, value_name = "ADDR[:PORT]", env = contract::boundary_env::UPSTREAM_DNS)]
    pub upstream_dns: Option<String>,
    /// File for the audit trail (JSON lines); default: standard error (`boundary run`) or
    /// standard output (`boundary sidecar`).
    #[arg(long, value_name = "FILE", env = contract::boundary_env::AUDIT_FILE)]
    pub audit_file: Option<PathBuf>,
    /// Audit lines: `json` (this project's records, the default) or `ocsf` (OCSF 1.3.0 events:
    /// HTTP Activity, Network Activity, ...; see the README's audit section).
    #[arg(long, value_name = "json|ocsf", env = contract::boundary_env::AUDIT_FORMAT)]
    pub audit_format: Option<boundary_proxy::audit::Format>,
    /// Rotate the audit file (`--audit-file`) before it grows past SIZE: bytes, or a number
    /// with K, KiB, M, MiB, G or GiB (powers of 1024), e.g. `10MiB`. Default: no rotation.
    #[arg(long, value_name = "SIZE", env = contract::boundary_env::AUDIT_MAX_BYTES,
          value_parser = parse_audit_max_bytes)]
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit files kept with `--audit-max-bytes` (FILE.1 newest .. FILE.K, the oldest
    /// dropped; 0 keeps none). Default: 5.
    #[arg(long, value_name = "K", env = contract::boundary_env::AUDIT_KEEP,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(boundary_proxy::audit::MAX_KEEP)))]
    pub audit_keep: Option<u32>,
    /// Seconds an upstream may take to send response headers before the client gets 504.
    #[arg(
        long,
        value_name = "SECONDS",
        env = contract::boundary_env::UPSTREAM_TIMEOUT,
        default_value_t = 300
    )]
    pub upstream_timeout: u64,
}

/// Coder's `config.yaml`, plus this project's extensions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    allowlist: Vec<String>,
    deny: Vec<String>,
    presets: Vec<String>,
    log_level: Option<String>,
    log_dir: Option<PathBuf>,
    proxy_port: Option<u16>,
    jail_type: Option<String>,
    no_user_namespace: Option<bool>,
    disable_audit_logs: Option<bool>,
    use_real_dns: Option<bool>,
    tier: Option<String>,
    mode: Option<String>,
    http: Vec<HttpRule>,
    tcp: Vec<TcpRule>,
    resolve: Vec<String>,
    upstream_ca: Vec<PathBuf>,
    audit_file: Option<PathBuf>,
    /// `json` or `ocsf`.
    audit_format: Option<String>,
    /// A size in bytes, or a string with a suffix (`10MiB`).
    audit_max_bytes: Option<SizeValue>,
    audit_keep: Option<u32>,
    /// `--credential` specs (the real values still come from the environment).
    credentials: Vec<String>,
    #[serde(flatten)]
    other: HashMap<String, serde_yaml_ng::Value>,
}

/// A size in the config file: a number of bytes or a string such as `10MiB`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn parse_audit_max_bytes(text: &str) -> Result<u64, String> {
    boundary_proxy::audit::parse_size(text).map_err(|e| e.to_string())
}

impl ProxyArgs {
    /// The audit trail's format and rotation: flags (or their env) over the config file's keys
    /// (`boundary run`; the sidecar has no config file).
    pub fn audit_options(
        &self,
        file_format: Option<&str>,
        file_max_bytes: Option<u64>,
        file_keep: Option<u32>,
    ) -> Result<boundary_proxy::audit::Options, ConfigError> {
        let format = match (self.audit_format, file_format) {
            (Some(f), _) => f,
            (None, Some(text)) => text
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("audit_format: {e}")))?,
            (None, None) => boundary_proxy::audit::Format::Json,
        };
        let keep = self.audit_keep.or(file_keep);
        if keep.is_some_and(|k| k > boundary_proxy::audit::MAX_KEEP) {
            return Err(ConfigError::Invalid(format!(
                "audit_keep: at most {}",
                boundary_proxy::audit::MAX_KEEP
            )));
        }
        let rotation = self.audit_max_bytes.or(file_max_bytes).map(|max_bytes| {
            boundary_proxy::audit::Rotation {
                max_bytes,
                keep: keep.unwrap_or(boundary_proxy::audit::DEFAULT_KEEP),
            }
        });
        Ok(boundary_proxy::audit::Options { format, rotation })
    }
}

/// Which tiers to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierChoice {
    /// The first that works, in order of preference.
    Auto,
    /// Exactly this one.
    Only(Tier),
}

impl TierChoice {
    /// The tiers to try, in order.
    pub fn candidates(self) -> Vec<Tier> {
        match self {
            TierChoice::Auto => Tier::ALL.to_vec(),
            TierChoice::Only(t) => vec![t],
        }
    }
}

/// Where audit records go.
pub use boundary_proxy::audit::Sink;

/// Everything `boundary run` needs, resolved.
#[derive(Debug)]
pub struct RunSettings {
    /// The command.
    pub command: Vec<OsString>,
    /// The rules (unused with a proxy socket).
    pub rules: RuleSet,
    /// Tiers to try.
    pub tier: TierChoice,
    /// The sidecar's socket.
    pub proxy_socket: Option<PathBuf>,
    /// Name overrides.
    pub resolve: HashMap<String, IpAddr>,
    /// Extra upstream CAs.
    pub upstream_cas: Vec<PathBuf>,
    /// `--upstream-dns`.
    pub upstream_dns: Option<SocketAddr>,
    /// Diagnostics (level and format resolved).
    pub log: LogArgs,
    /// Audit destination.
    pub audit: Sink,
    /// The audit lines' format, the audit file's rotation.
    pub audit_options: boundary_proxy::audit::Options,
    /// Explicit proxy port (landlock tier).
    pub proxy_port: Option<u16>,
    /// Container name.
    pub container: Option<String>,
    /// Loopback ports redirected out of the jail to the proxy (sorted, without duplicates).
    pub pod_local_ports: Vec<u16>,
    /// Response-header timeout for upstreams.
    pub upstream_timeout: std::time::Duration,
    /// Inbound ports relayed into the jail.
    pub inbound_ports: Vec<u16>,
    /// How long to wait for the sidecar at the start.
    pub sidecar_wait: std::time::Duration,
    /// Warnings to print once logging is set up.
    pub warnings: Vec<String>,
    /// `--credential`: the credentials, their values and the jail's placeholders.
    pub credentials: crate::credentials::Standalone,
}

/// A settings problem, reported before anything starts (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No command after `--`.
    #[error("no command given: use boundary run [FLAGS] -- CMD [ARGS...]")]
    NoCommand,
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A flag value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Rules that do not compile.
    #[error("{0}")]
    Rules(#[from] CompileErrors),
    /// A policy file could not be read, parsed, or its rules do not compile.
    #[error("policy file {path}: {}", .problems.join("; "))]
    Policy {
        /// The file.
        path: String,
        /// Each problem, with its document, policy, field and position.
        problems: Vec<String>,
    },
}

/// Reads and parses the config file.
pub fn read_config(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn parse_tier(value: &str) -> Result<TierChoice, ConfigError> {
    match value {
        "auto" => Ok(TierChoice::Auto),
        other => other
            .parse::<Tier>()
            .map(TierChoice::Only)
            .map_err(|e| ConfigError::Invalid(format!("--tier: {e} (or auto)"))),
    }
}

fn parse_jail_type(value: &str) -> Result<TierChoice, ConfigError> {
    match value {
        "nsjail" => Ok(TierChoice::Auto),
        "landjail" => Ok(TierChoice::Only(Tier::Landlock)),
        other => Err(ConfigError::Invalid(format!(
            "jail type {other:?}: expected nsjail or landjail"
        ))),
    }
}

fn parse_mode(value: &str) -> Result<Mode, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        _ => Err(ConfigError::Invalid(format!(
            "mode {value:?}: expected enforce or audit"
        ))),
    }
}

/// The most pod-local ports a jail redirects: two nftables rules each, matched in turn by every
/// loopback packet of the jail.
pub const MAX_POD_LOCAL_PORTS: usize = 256;

fn parse_port(flag: &str, item: &str) -> Result<Port, ConfigError> {
    item.trim()
        .parse::<u16>()
        .ok()
        .and_then(Port::new)
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{flag} {item:?}: expected a TCP port number (1 to 65535)"
            ))
        })
}

/// One rule per `--allow-pod-local` port, so a problem names its place.
fn allow_pod_local(items: &[String]) -> Result<Vec<PodLocalRule>, ConfigError> {
    items
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            Ok(PodLocalRule {
                ports: vec![parse_port("--allow-pod-local", p)?],
                description: None,
            })
        })
        .collect()
}

/// The ports to redirect out of the jail: `--pod-local-port` and `--allow-pod-local` together.
/// The jail's own ports (forwarder, DNS) stay the jail's, with a warning.
fn pod_local_ports(
    redirect: &[String],
    allowed: &[PodLocalRule],
    warnings: &mut Vec<String>,
) -> Result<Vec<u16>, ConfigError> {
    let mut ports = Vec::new();
    for item in redirect.iter().filter(|i| !i.trim().is_empty()) {
        ports.push(parse_port("--pod-local-port", item)?.get());
    }
    ports.extend(allowed.iter().flat_map(|r| r.ports.iter().map(|p| p.get())));
    ports.sort_unstable();
    ports.dedup();
    ports.retain(|&port| {
        let own = port == contract::ports::JAIL_FORWARDER || port == contract::ports::JAIL_DNS;
        if own {
            warnings.push(format!(
                "pod-local port {port} is ignored: the jail uses it itself, so it stays inside the jail"
            ));
        }
        !own
    });
    if ports.len() > MAX_POD_LOCAL_PORTS {
        return Err(ConfigError::Invalid(format!(
            "{} pod-local ports: at most {MAX_POD_LOCAL_PORTS} can be redirected out of the jail",
            ports.len()
        )));
    }
    Ok(ports)
}

/// Rule strings of a flag and of the config file, flags first, blank ones left out.
fn rule_strings(flags: &[String], file: &[String]) -> Vec<String> {
    flags
        .iter()
        .chain(file)
        .filter(|r| !r.trim().is_empty())
        .cloned()
        .collect()
}

/// Preset names from flags and file; the environment's list may be one name per line.
fn preset_names(flags: &[String], file: &[String]) -> Vec<String> {
    rule_strings(flags, file)
        .iter()
        .flat_map(|p| p.lines().map(|l| l.trim().to_owned()).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Coder's `PROXY_PORT`; a value that is not a port is left out with a warning.
fn coder_proxy_port(value: Option<&str>, warnings: &mut Vec<String>) -> Option<u16> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    let port = value.parse::<u16>().ok().filter(|p| *p != 0);
    if port.is_none() {
        warnings.push(format!(
            "{}={value:?} is not a TCP port and was ignored",
            contract::coder_env::PROXY_PORT
        ));
    }
    port
}

/// Parses `HOST=IP` overrides.
pub fn parse_resolve(items: &[String]) -> Result<HashMap<String, IpAddr>, ConfigError> {
    let mut out = HashMap::new();
    for item in items.iter().filter(|i| !i.trim().is_empty()) {
        let (host, ip) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("--resolve {item:?}: expected HOST=IP")))?;
        let ip: IpAddr = ip.trim().parse().map_err(|_| {
            ConfigError::Invalid(format!("--resolve {item:?}: {ip:?} is not an IP address"))
        })?;
        let host = rules::Host::parse(host)
            .map_err(|e| ConfigError::Invalid(format!("--resolve {item:?}: {e}")))?;
        out.insert(host.to_string(), ip);
    }
    Ok(out)
}

/// Parses `--upstream-dns`: `ADDR`, `ADDR:PORT`, `[V6]:PORT` (port 53 by default).
pub fn parse_upstream_dns(value: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, 53)));
    }
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        ConfigError::Invalid(format!(
            "--upstream-dns {text:?}: expected an IP address with an optional port \
             (10.0.0.10, 10.0.0.10:5353, [fd00::10]:53)"
        ))
    })
}

impl RunArgs {
    /// Resolves flags, environment and config file into settings.
    pub fn resolve(&self) -> Result<RunSettings, ConfigError> {
        if self.command.is_empty() {
            return Err(ConfigError::NoCommand);
        }
        let file = match &self.config {
            Some(path) => read_config(path)?,
            None => ConfigFile::default(),
        };
        let mut warnings = Vec::new();
        if file.use_real_dns == Some(true) {
            warnings.push("use_real_dns is ignored: the jail always answers DNS itself, so queries cannot leak".into());
        }
        for key in file.other.keys() {
            if !key.starts_with("pprof") {
                warnings.push(format!("config key {key:?} is not known and was ignored"));
            }
        }

        let tier = if let Some(t) = &self.tier {
            parse_tier(t)?
        } else if let Some(t) = &self.jail_type {
            parse_jail_type(t)?
        } else if self.no_user_namespace == Some(true) {
            TierChoice::Only(Tier::PrivilegedNetns)
        } else if let Some(t) = &file.tier {
            parse_tier(t)?
        } else if let Some(t) = &file.jail_type {
            parse_jail_type(t)?
        } else if file.no_user_namespace == Some(true) {
            TierChoice::Only(Tier::PrivilegedNetns)
        } else {
            TierChoice::Auto
        };

        let rules = self.rules(&file, &mut warnings)?;
        let pod_local_ports =
            pod_local_ports(&self.pod_local_ports, &rules.pod_local, &mut warnings)?;
        let has_rules = !rules.set.rules().is_empty() || !rules.set.deny_rules().is_empty();
        if self.proxy_socket.is_some() && has_rules {
            warnings.push("--allow, --deny, --policy and config rules are ignored with --proxy-socket: the sidecar enforces the BoundaryPolicy".into());
        }
        let mut resolve_items = self.proxy.resolve.clone();
        resolve_items.extend(file.resolve.iter().cloned());
        resolve_items.extend(rules.resolve);
        let audit_options = self.audit_options(&file, &mut warnings)?;
        let disable = self.disable_audit_logs.or(file.disable_audit_logs) == Some(true);
        let audit = if disable {
            Sink::Disabled
        } else if let Some(f) = self.proxy.audit_file.clone().or(file.audit_file) {
            Sink::File(f)
        } else if let Some(dir) = self.log_dir.clone().or(file.log_dir) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ConfigError::Invalid(format!("log dir {}: {e}", dir.display())))?;
            Sink::File(dir.join("boundary-audit.jsonl"))
        } else {
            Sink::Stderr
        };
        let coder_port = coder_proxy_port(self.coder_proxy_port.as_deref(), &mut warnings);
        let proxy_port = self.proxy_port.or(file.proxy_port).or(coder_port);
        let mut upstream_cas = self.proxy.upstream_ca.clone();
        upstream_cas.extend(file.upstream_ca.iter().cloned());
        let credentials = self.credentials(&file.credentials, rules.credentials, &mut warnings)?;
        Ok(RunSettings {
            command: self.command.clone(),
            rules: rules.set,
            tier,
            proxy_socket: self.proxy_socket.clone(),
            resolve: parse_resolve(&resolve_items)?,
            upstream_cas,
            upstream_dns: parse_upstream_dns(self.proxy.upstream_dns.as_deref())?,
            log: LogArgs {
                level: self.log.level.clone().or(file.log_level),
                format: self.log.format,
            }
            .or_defaults("warn", LogFormat::Text),
            audit,
            audit_options,
            proxy_port,
            container: self.container.clone(),
            pod_local_ports,
            upstream_timeout: std::time::Duration::from_secs(self.proxy.upstream_timeout.max(1)),
            inbound_ports: crate::inbound::parse_ports(&self.inbound_ports)
                .map_err(ConfigError::Invalid)?,
            sidecar_wait: std::time::Duration::from_secs(self.sidecar_wait_seconds),
            warnings,
            credentials,
        })
    }

    /// The audit format and rotation of the flags and the config file.
    fn audit_options(
        &self,
        file: &ConfigFile,
        warnings: &mut Vec<String>,
    ) -> Result<boundary_proxy::audit::Options, ConfigError> {
        let file_max_bytes = match &file.audit_max_bytes {
            None => None,
            Some(SizeValue::Bytes(0)) => {
                return Err(ConfigError::Invalid(
                    "audit_max_bytes: at least 1 byte".into(),
                ));
            }
            Some(SizeValue::Bytes(n)) => Some(*n),
            Some(SizeValue::Text(text)) => Some(
                boundary_proxy::audit::parse_size(text)
                    .map_err(|e| ConfigError::Invalid(format!("audit_max_bytes: {e}")))?,
            ),
        };
        let options = self.proxy.audit_options(
            file.audit_format.as_deref(),
            file_max_bytes,
            file.audit_keep,
        )?;
        // As `resolve` picks the sink: a file, unless the trail is off.
        let to_file = self.disable_audit_logs.or(file.disable_audit_logs) != Some(true)
            && (self.proxy.audit_file.is_some()
                || file.audit_file.is_some()
                || self.log_dir.is_some()
                || file.log_dir.is_some());
        if options.rotation.is_some() && !to_file {
            warnings.push(
                "--audit-max-bytes rotates an audit file only: give --audit-file (or log_dir)"
                    .into(),
            );
        }
        Ok(options)
    }

    /// The rules of the flags, the config file and the policy files, in one set: their union,
    /// deny rules beating every allow rule. The mode: --mode (or the config file's) when given,
    /// else the policies' combined as in a pod (Enforce beats Audit), else Enforce.
    pub fn rules(
        &self,
        file: &ConfigFile,
        warnings: &mut Vec<String>,
    ) -> Result<Rules, ConfigError> {
        let mode = self
            .mode
            .as_deref()
            .or(file.mode.as_deref())
            .map(parse_mode)
            .transpose()?;
        let allow = rule_strings(&self.allow, &file.allowlist);
        let deny = rule_strings(&self.deny, &file.deny);
        let presets = preset_names(&self.presets, &file.presets);
        let pod_local = allow_pod_local(&self.allow_pod_local)?;
        let mut compiled = rules::compile(RuleSource {
            policy: None,
            cluster: false,
            field_prefix: "--",
            deny: &deny,
            presets: &presets,
            allow: &allow,
            http: &file.http,
            tcp: &file.tcp,
            pod_local: &pod_local,
            ..RuleSource::default()
        })?;
        let mut out = Rules {
            pod_local,
            ..Rules::default()
        };
        let mut policy_mode: Option<Mode> = None;
        for path in self.policy.iter().filter(|p| !p.as_os_str().is_empty()) {
            let policies = read_policy_file(path)?;
            warnings.extend(
                policies
                    .notes
                    .iter()
                    .map(|n| format!("policy file {}: {n}", path.display())),
            );
            let mut problems = Vec::new();
            for policy in &policies.policies {
                let entry = &policy.entry;
                policy_mode = Some(policy_mode.map_or(entry.mode, |m| m.strictest(entry.mode)));
                match entry.compile() {
                    Ok(rules) => compiled.extend(rules),
                    Err(CompileErrors(list)) => problems.extend(list.iter().map(|p| {
                        let column = p.column.map(|c| format!(" column {c}")).unwrap_or_default();
                        format!(
                            "document {} ({}), {}{column}: {}",
                            policy.document,
                            policy.describe(),
                            p.field,
                            p.message
                        )
                    })),
                }
                out.pod_local.extend(entry.pod_local.iter().cloned());
                for pin in &entry.resolve {
                    if let Some(first) = pin.addresses.first() {
                        out.resolve.push(format!("{}={first}", pin.host));
                    }
                    if pin.addresses.len() > 1 {
                        warnings.push(format!(
                            "policy file {}: {}: spec.resolve {}: only the first address, {}, is used here",
                            path.display(),
                            policy.describe(),
                            pin.host,
                            pin.addresses[0]
                        ));
                    }
                }
                for credential in &entry.credentials {
                    out.credentials
                        .push(policy_credential(path, policy, credential)?);
                }
            }
            if !problems.is_empty() {
                return Err(ConfigError::Policy {
                    path: path.display().to_string(),
                    problems,
                });
            }
        }
        out.set = RuleSet::new(compiled, mode.or(policy_mode).unwrap_or(Mode::Enforce));
        Ok(out)
    }

    /// `--credential`, with the real values from this process's environment.
    fn credentials(
        &self,
        from_file: &[String],
        from_policies: Vec<Credential>,
        warnings: &mut Vec<String>,
    ) -> Result<crate::credentials::Standalone, ConfigError> {
        let specs: Vec<&String> = self
            .credentials
            .iter()
            .chain(from_file)
            .filter(|s| !s.trim().is_empty())
            .collect();
        if specs.is_empty() && from_policies.is_empty() {
            return Ok(crate::credentials::Standalone::default());
        }
        if self.proxy_socket.is_some() {
            warnings.push("--credential is ignored with --proxy-socket: the sidecar puts in the BoundaryPolicy's credentials".into());
            return Ok(crate::credentials::Standalone::default());
        }
        let mut parsed = specs
            .iter()
            .map(|s| crate::credentials::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Invalid)?;
        parsed.extend(from_policies);
        let seed = crate::credentials::random_seed().map_err(ConfigError::Invalid)?;
        crate::credentials::resolve(parsed, &|var| std::env::var(var).ok(), &seed)
            .map_err(ConfigError::Invalid)
    }
}

/// What the flags, the config file and the policy files add up to (see [`RunArgs::rules`]).
#[derive(Debug, Default)]
pub struct Rules {
    /// Every rule, with the mode.
    pub set: RuleSet,
    /// Every pod-local rule (their ports are redirected out of the jail).
    pub pod_local: Vec<PodLocalRule>,
    /// The policies' `resolve` pins, as `HOST=IP`.
    pub resolve: Vec<String>,
    /// The policies' credentials (values from this process's environment).
    pub credentials: Vec<Credential>,
}

/// Reads and parses a policy file.
pub fn read_policy_file(path: &Path) -> Result<PolicyFile, ConfigError> {
    let fail = |problems: Vec<String>| ConfigError::Policy {
        path: path.display().to_string(),
        problems,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(vec![e.to_string()]))?;
    policy_file::parse(&text).map_err(|e| fail(e.0.iter().map(ToString::to_string).collect()))
}

/// A policy's credential on a laptop: the real value comes from the environment variable its
/// `env` names (as `--credential env=VAR`), so the jail sees only the placeholder; there is no
/// Secret to read. `awsSigV4` reads `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
fn policy_credential(
    path: &Path,
    policy: &FilePolicy,
    credential: &Credential,
) -> Result<Credential, ConfigError> {
    let fail = |message: String| ConfigError::Policy {
        path: path.display().to_string(),
        problems: vec![format!(
            "document {} ({}), spec.credentials {:?}: {message}",
            policy.document,
            policy.describe(),
            credential.name
        )],
    };
    if let Err(problems) = credential.apply() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(fail(text.join("; ")));
    }
    if credential.inject.aws_sig_v4.is_none() && credential.env.as_deref().is_none_or(str::is_empty)
    {
        return Err(fail(
            "env is missing: on a laptop the real value is read from the environment variable \
             env names (the jailed command sees a placeholder there)"
                .into(),
        ));
    }
    Ok(credential.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(list: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("boundary").chain(list.iter().copied()))
            .unwrap()
            .run
    }

    #[test]
    fn credentials_come_from_flags_and_the_config_file() {
        let dir = std::env::temp_dir().join(format!("boundary-config-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(
            &file,
            "credentials:\n  - domain=b.test env=PATH header=x-b format=Bearer {value}\n",
        )
        .unwrap();
        let cfg = file.to_string_lossy().into_owned();
        // PATH is set in every test environment: it stands in for a token.
        let s = args(&[
            "--config",
            &cfg,
            "--credential",
            "domain=a.test env=PATH header=x-a name=a",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        let names: Vec<&str> = s
            .credentials
            .credentials
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["a", "path"]);
        let e = args(&["--credential", "domain=a.test header=x", "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("env=VAR is missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn coder_config_keys_are_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("boundary-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(
            &file,
            "allowlist:\n  - domain=api.anthropic.com\n  - method=GET domain=github.com\nlog_level: info\nproxy_port: 8087\njail_type: landjail\nuse_real_dns: true\npprof_enabled: true\ntcp:\n  - {domain: github.com, ports: [22]}\nmystery: 1\n",
        )
        .unwrap();
        let cfg = file.to_string_lossy().into_owned();
        let s = args(&[
            "--config",
            &cfg,
            "--allow",
            "domain=example.com",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.rules.rules().len(), 4, "flag + two allowlist + tcp");
        assert_eq!(s.tier, TierChoice::Only(Tier::Landlock));
        assert_eq!(s.proxy_port, Some(8087));
        assert_eq!(s.log.level.as_deref(), Some("info"));
        assert!(s.warnings.iter().any(|w| w.contains("use_real_dns")));
        assert!(s.warnings.iter().any(|w| w.contains("mystery")));
        assert!(!s.warnings.iter().any(|w| w.contains("pprof")));
        let s = args(&["--config", &cfg, "--tier", "userns", "--", "true"])
            .resolve()
            .unwrap();
        assert_eq!(s.tier, TierChoice::Only(Tier::Userns));
        let s = args(&["--config", &cfg, "--no-user-namespace", "--", "true"])
            .resolve()
            .unwrap();
        assert_eq!(s.tier, TierChoice::Only(Tier::PrivilegedNetns));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_settings_are_reported_with_their_place() {
        let e = args(&[
            "--allow",
            "domain=ok.com",
            "--allow",
            "metod=GET",
            "--",
            "true",
        ])
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("--allow[1] column 1"), "{e}");
        let e = args(&["--tier", "nsjail", "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("unknown jail tier"), "{e}");
        let e = args(&["--resolve", "a.com=not-ip", "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("not an IP"), "{e}");
        assert!(matches!(args(&[]).resolve(), Err(ConfigError::NoCommand)));
        let e = args(&["--config", "/nonexistent/x.yaml", "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.yaml"), "{e}");
    }

    #[test]
    fn pod_local_ports_are_allowed_redirected_and_checked() {
        let s = args(&[
            "--allow-pod-local",
            "5432,2375",
            "--pod-local-port",
            "8080,5432",
            "--pod-local-port",
            "53",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.pod_local_ports, [2375, 5432, 8080]);
        assert!(
            s.warnings.iter().any(|w| w.contains("port 53 is ignored")),
            "{:?}",
            s.warnings
        );
        let allowed: Vec<u16> = [5432, 2375, 8080]
            .into_iter()
            .filter(|p| s.rules.check_pod_local(*p).is_some())
            .collect();
        assert_eq!(allowed, [5432, 2375], "redirected is not allowed");
        assert_eq!(
            s.rules.check_pod_local(2375).unwrap().origin().to_string(),
            "--allow-pod-local[1]: podLocal ports=2375"
        );
        let e = args(&["--allow-pod-local", "5432,53", "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("--allow-pod-local[1].ports[0]: port 53 cannot be pod-local"),
            "{e}"
        );
        for bad in ["0", "65536", "db"] {
            let e = args(&["--pod-local-port", bad, "--", "true"])
                .resolve()
                .unwrap_err();
            assert!(
                e.to_string().contains("expected a TCP port number"),
                "{bad}: {e}"
            );
            let e = args(&["--allow-pod-local", bad, "--", "true"])
                .resolve()
                .unwrap_err();
            assert!(e.to_string().starts_with("--allow-pod-local"), "{bad}: {e}");
        }
        // The webhook sets the contract's name.
        let command = <Cli as clap::CommandFactory>::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some("pod-local-port"))
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(contract::env::POD_LOCAL_PORTS)
        );
        let many: Vec<String> = (10_000..10_300).map(|p| p.to_string()).collect();
        let e = args(&["--pod-local-port", &many.join(","), "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("at most 256"), "{e}");
    }

    #[test]
    fn presets_come_from_flags_and_the_config_file_and_name_themselves() {
        let dir = TempDir::new();
        let file = dir.0.join("config.yaml");
        std::fs::write(&file, "presets: [npm]\n").unwrap();
        let cfg = file.to_string_lossy().into_owned();
        let s = args(&[
            "--config",
            &cfg,
            "--preset",
            "github-read-only,pypi",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        let origins: Vec<String> = s
            .rules
            .rules()
            .iter()
            .map(|r| r.origin().to_string())
            .collect();
        assert!(
            origins.contains(
                &"--preset[1] (pypi): domain=files.pythonhosted.org method=GET,HEAD".to_owned()
            ),
            "{origins:?}"
        );
        assert!(
            origins.contains(
                &"--preset[2] (npm): domain=registry.npmjs.org method=GET,HEAD".to_owned()
            ),
            "{origins:?}"
        );
        assert_eq!(
            s.rules.deny_rules()[0].origin().to_string(),
            "--preset[0] (github-read-only): domain=github.com path=/*/*/git-receive-pack"
        );
        let e = args(&["--preset", "npm", "--preset", "nmp", "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("--preset[1]: unknown preset \"nmp\"; the presets are:"),
            "{e}"
        );
        let command = <Cli as clap::CommandFactory>::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some("preset"))
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(contract::boundary_env::PRESET)
        );
        // The environment's list: one name per line, as for rules.
        assert_eq!(
            preset_names(&["npm\n pypi \n".to_owned()], &[]),
            ["npm", "pypi"]
        );
    }

    #[test]
    fn deny_rules_come_from_flags_and_the_config_file() {
        let dir = TempDir::new();
        let file = dir.0.join("config.yaml");
        std::fs::write(
            &file,
            "allowlist: [\"domain=*\"]\ndeny:\n  - domain=pastebin.com\n",
        )
        .unwrap();
        let cfg = file.to_string_lossy().into_owned();
        let s = args(&[
            "--config",
            &cfg,
            "--deny",
            "domain=*.github.com method=POST path=/gists",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        let deny: Vec<String> = s
            .rules
            .deny_rules()
            .iter()
            .map(|r| r.origin().to_string())
            .collect();
        assert_eq!(
            deny,
            [
                "--deny[0]: domain=*.github.com method=POST path=/gists",
                "--deny[1]: domain=pastebin.com"
            ]
        );
        assert_eq!(s.rules.rules().len(), 1);
        let e = args(&["--deny", "domain=a.com metod=POST", "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("--deny[0] column 14"), "{e}");
        let command = <Cli as clap::CommandFactory>::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some("deny"))
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(contract::env::DENY)
        );
    }

    const POLICY_FILE: &str = "\
apiVersion: agentboundary.dev/v1alpha1
kind: BoundaryPolicy
metadata: {name: agent}
spec:
  podSelector: {}
  mode: Audit
  allow: [domain=a.test]
  podLocal: [{ports: [5432]}]
  resolve: [{host: a.test, addresses: [127.0.0.1, 127.0.0.2]}]
  credentials:
    - name: token
      env: PATH
      secretKeyRef: {name: s, key: k}
      destinations: [{domains: [a.test]}]
      inject: {header: {name: X-Token}}
";

    /// A variable every test environment has, standing in for a token.
    const STAND_IN: &str = "PATH";

    #[test]
    fn policy_files_join_the_flags_with_modes_credentials_ports_and_pins() {
        let dir = TempDir::new();
        let file = dir.0.join("policy.yaml");
        std::fs::write(&file, POLICY_FILE).unwrap();
        let path = file.to_string_lossy().into_owned();
        let s = args(&["--policy", &path, "--allow", "domain=b.test", "--", "true"])
            .resolve()
            .unwrap();
        let origins: Vec<String> = s
            .rules
            .rules()
            .iter()
            .map(|r| r.origin().to_string())
            .collect();
        assert_eq!(
            origins,
            [
                "--allow[0]: domain=b.test",
                "agent spec.allow[0]: domain=a.test",
                "agent spec.podLocal[0]: podLocal ports=5432"
            ]
        );
        assert_eq!(s.rules.mode(), Mode::Audit, "the policy's own mode");
        assert_eq!(s.pod_local_ports, [5432], "redirected out of the jail");
        assert_eq!(s.resolve["a.test"], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("only the first address")),
            "{:?}",
            s.warnings
        );
        // PATH stands in for a token: the value comes from the caller's environment.
        assert_eq!(s.credentials.credentials[0].name, "token");
        assert!(matches!(
            &s.credentials.values["token"],
            boundary_api::credentials::CredentialValue::Value(v) if *v == std::env::var(STAND_IN).unwrap()
        ));
        // --mode wins; a second Enforce policy beats Audit.
        let s = args(&["--policy", &path, "--mode", "enforce", "--", "true"])
            .resolve()
            .unwrap();
        assert_eq!(s.rules.mode(), Mode::Enforce);
        let enforce = dir.0.join("enforce.yaml");
        std::fs::write(
            &enforce,
            "apiVersion: agentboundary.dev/v1alpha1\nkind: BoundaryPolicy\nmetadata: {name: b}\nspec: {}\n",
        )
        .unwrap();
        let both = format!("{path},{}", enforce.display());
        let s = args(&["--policy", &both, "--", "true"]).resolve().unwrap();
        assert_eq!(s.rules.mode(), Mode::Enforce);
        // A credential needs `env` on a laptop.
        std::fs::write(&file, POLICY_FILE.replace("      env: PATH\n", "")).unwrap();
        let e = args(&["--policy", &path, "--", "true"])
            .resolve()
            .unwrap_err();
        assert!(
            e.to_string().contains(
                "document 1 (BoundaryPolicy agent), spec.credentials \"token\": env is missing"
            ),
            "{e}"
        );
        let command = <Cli as clap::CommandFactory>::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some("policy"))
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(contract::boundary_env::POLICY)
        );
    }

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "boundary-config-deny-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn coders_proxy_port_and_the_sidecar_wait_are_flags_with_contract_env_names() {
        let s = args(&["--coder-proxy-port", "8099", "--", "true"])
            .resolve()
            .unwrap();
        assert_eq!(s.proxy_port, Some(8099));
        assert_eq!(s.sidecar_wait, std::time::Duration::from_mins(1));
        let s = args(&[
            "--coder-proxy-port",
            "8099",
            "--proxy-port",
            "8087",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.proxy_port, Some(8087), "--proxy-port wins");
        let s = args(&["--coder-proxy-port", "http", "--", "true"])
            .resolve()
            .unwrap();
        assert_eq!(s.proxy_port, None);
        assert!(
            s.warnings.iter().any(|w| w.contains("PROXY_PORT=\"http\"")),
            "{:?}",
            s.warnings
        );
        let s = args(&["--sidecar-wait-seconds", "3", "--", "true"])
            .resolve()
            .unwrap();
        assert_eq!(s.sidecar_wait, std::time::Duration::from_secs(3));
        let command = <Cli as clap::CommandFactory>::command();
        let env = |long: &str| {
            command
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str())
                .map(str::to_owned)
        };
        assert_eq!(
            env("coder-proxy-port").as_deref(),
            Some(contract::coder_env::PROXY_PORT)
        );
        assert_eq!(
            env("sidecar-wait-seconds").as_deref(),
            Some(contract::boundary_env::SIDECAR_WAIT_SECONDS)
        );
        assert_eq!(env("log-level").as_deref(), Some(contract::log_env::LEVEL));
    }

    #[test]
    fn the_log_level_comes_from_the_flag_then_the_config_file_then_warn() {
        let s = args(&["--", "true"]).resolve().unwrap();
        assert_eq!(s.log.level.as_deref(), Some("warn"));
        assert_eq!(s.log.format, Some(LogFormat::Text));
        let dir = TempDir::new();
        let file = dir.0.join("config.yaml");
        std::fs::write(&file, "log_level: debug\n").unwrap();
        let cfg = file.to_string_lossy().into_owned();
        let s = args(&["--config", &cfg, "--", "true"]).resolve().unwrap();
        assert_eq!(s.log.level.as_deref(), Some("debug"));
        let s = args(&[
            "--config",
            &cfg,
            "--log-level",
            "error",
            "--log-format",
            "json",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.log.level.as_deref(), Some("error"));
        assert_eq!(s.log.format, Some(LogFormat::Json));
    }

    #[test]
    fn resolve_overrides_are_normalised() {
        let r = parse_resolve(&["API.Example.COM=127.0.0.1".into()]).unwrap();
        assert_eq!(r["api.example.com"], "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn upstream_dns_takes_an_address_with_an_optional_port() {
        let parse = |v: &str| parse_upstream_dns(Some(v));
        assert_eq!(
            parse("10.0.0.10").unwrap(),
            Some("10.0.0.10:53".parse().unwrap())
        );
        assert_eq!(
            parse("127.0.0.1:5353").unwrap(),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse("fd00::10").unwrap(),
            Some("[fd00::10]:53".parse().unwrap())
        );
        assert_eq!(
            parse("[fd00::10]").unwrap(),
            Some("[fd00::10]:53".parse().unwrap())
        );
        assert_eq!(
            parse("[::1]:5353").unwrap(),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(parse(" ").unwrap(), None);
        assert_eq!(parse_upstream_dns(None).unwrap(), None);
        for bad in ["dns.example", "10.0.0.1:dns", "10.0.0.1:99999"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("--upstream-dns") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn audit_format_and_rotation_come_from_flags_over_the_config_file() {
        use boundary_proxy::audit::{Format, Options, Rotation};
        // Defaults: today's JSON lines, a file that only grows.
        let s = args(&["--audit-file", "/tmp/a.jsonl", "--", "true"])
            .resolve()
            .unwrap();
        assert_eq!(s.audit_options, Options::default());

        let dir = TempDir::new();
        let file = dir.0.join("audit-config.yaml");
        std::fs::write(
            &file,
            "audit_file: /tmp/a.jsonl\naudit_format: ocsf\naudit_max_bytes: 10MiB\naudit_keep: 2\n",
        )
        .unwrap();
        let cfg = file.to_string_lossy().into_owned();
        let s = args(&["--config", &cfg, "--", "true"]).resolve().unwrap();
        assert_eq!(
            s.audit_options,
            Options {
                format: Format::Ocsf,
                rotation: Some(Rotation {
                    max_bytes: 10 << 20,
                    keep: 2
                }),
            }
        );
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s = args(&[
            "--config",
            &cfg,
            "--audit-format",
            "json",
            "--audit-max-bytes",
            "4096",
            "--",
            "true",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.audit_options.format, Format::Json);
        assert_eq!(
            s.audit_options.rotation,
            Some(Rotation {
                max_bytes: 4096,
                keep: 2
            })
        );
        // Bytes as a number; keep defaults to 5; rotation without a file is said.
        std::fs::write(&file, "audit_max_bytes: 1000\n").unwrap();
        let s = args(&["--config", &cfg, "--", "true"]).resolve().unwrap();
        assert_eq!(
            s.audit_options.rotation,
            Some(Rotation {
                max_bytes: 1000,
                keep: 5
            })
        );
        assert!(
            s.warnings.iter().any(|w| w.contains("--audit-max-bytes")),
            "{:?}",
            s.warnings
        );
        // Bad values, named.
        for (text, word) in [
            ("audit_format: cef\n", "audit_format"),
            ("audit_max_bytes: 10MB\n", "audit_max_bytes"),
            ("audit_max_bytes: 0\n", "audit_max_bytes"),
            ("audit_keep: 5000\n", "audit_keep"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = args(&["--config", &cfg, "--", "true"])
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{text}: {e}");
        }
        for bad in [
            ["--audit-format", "cef"],
            ["--audit-max-bytes", "0"],
            ["--audit-keep", "1001"],
        ] {
            let list = [bad[0], bad[1], "--", "true"];
            assert!(
                Cli::try_parse_from(std::iter::once("boundary").chain(list.iter().copied()))
                    .is_err(),
                "{bad:?}"
            );
        }
    }
}
