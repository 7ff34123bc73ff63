//! Daemon settings: flags, each also an environment variable `CARAVAN_*`, over an optional
//! TOML file (default `/etc/caravan/caravan.toml`), over built-in defaults.
//!
//! Precedence is flag or environment, then file, then default. Nothing from an earlier run
//! is persisted, so nothing can silently override a flag (a Convoy pitfall).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::core::error::{Error, Result};
use crate::daemon::spec::validate_driver_name;

pub const DEFAULT_CONFIG: &str = "/etc/caravan/caravan.toml";
pub const DEFAULT_SOCKET: &str = "/run/caravan/caravan.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/caravan";
pub const DEFAULT_SPEC_DIR: &str = "/etc/docker/plugins";
pub const DEFAULT_DRIVER: &str = "caravan";
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(15);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `caravan daemon` flags. Every one is optional here so that the file can fill it in.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// The shared export, already mounted. Default: <state-dir>/shared, a local folder
    /// (volumes are then not shared with other hosts).
    #[arg(long, env = "CARAVAN_ROOT")]
    pub root: Option<PathBuf>,
    /// An NFSv4 export to mount at <state-dir>/export and use as the root, instead of
    /// --root: SERVER:/EXPORT
    #[arg(long, env = "CARAVAN_NFS", conflicts_with = "root")]
    pub nfs: Option<String>,
    /// Kernel NFS options over the defaults (vers=4.2,proto=tcp,hard,timeo=600,retrans=2),
    /// comma-separated, e.g. vers=4.1,rsize=1048576
    #[arg(long, env = "CARAVAN_NFS_OPTIONS", requires = "nfs")]
    pub nfs_options: Option<String>,
    /// This node's name in the cluster [default: the host name]
    #[arg(long, env = "CARAVAN_NODE")]
    pub node: Option<String>,
    /// Node-local state: mountpoints live under <state-dir>/mounts [default: /var/lib/caravan]
    #[arg(long, env = "CARAVAN_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Unix socket serving the plugin and control APIs [default: /run/caravan/caravan.sock]
    #[arg(long, env = "CARAVAN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Where dockerd looks for plugin spec files [default: /etc/docker/plugins]
    #[arg(long, env = "CARAVAN_SPEC_DIR")]
    pub spec_dir: Option<PathBuf>,
    /// The driver name users pass to `docker volume create -d` [default: caravan]
    #[arg(long, env = "CARAVAN_DRIVER_NAME")]
    pub driver_name: Option<String>,
    /// Longest time any call may take before it fails with an error (dockerd gives up
    /// after 60 s) [default: 20s]
    #[arg(long, env = "CARAVAN_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// A node whose heartbeat has not moved for this long is dead: its mounts no longer
    /// block removal, and its exclusive volumes can be taken over [default: 15s]
    #[arg(long, env = "CARAVAN_DEAD_AFTER", value_parser = parse_dead_after)]
    pub dead_after: Option<Duration>,
    /// How much longer than --dead-after a takeover of an exclusive volume waits, so that
    /// writes the dead holder's export client still had in flight can no longer land
    /// [default: from the export: 0 for a local folder, GlusterFS's ping timeout (42s
    /// unless set), NFS soft mounts' timeo and retrans; hard NFS mounts have no bound]
    #[arg(long, env = "CARAVAN_FENCE_WAIT", value_parser = parse_fence_wait)]
    pub fence_wait: Option<Duration>,
    /// How often this node writes its heartbeat [default: 1s, at most dead-after / 3]
    #[arg(long, env = "CARAVAN_HEARTBEAT", value_parser = parse_heartbeat)]
    pub heartbeat: Option<Duration>,
    /// Connections served at once on the socket; more wait until one closes
    /// [default: 512, range 8 to 65536]
    #[arg(long, env = "CARAVAN_MAX_CONNECTIONS", value_parser = parse_max_connections)]
    pub max_connections: Option<usize>,
    /// Time a connection has to send a whole request head (from being accepted or from
    /// its previous answer: also the idle timeout), and then its body [default: 10s]
    #[arg(long, env = "CARAVAN_HEADER_TIMEOUT", value_parser = parse_header_timeout)]
    pub header_timeout: Option<Duration>,
    /// A group whose members may connect to the socket (mode 0660) and read: list,
    /// inspect, nodes, info. Changes stay root's [default: none, mode 0600]
    #[arg(long, env = "CARAVAN_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics: PORT (on 127.0.0.1) or HOST:PORT
    /// [default: off]
    #[arg(long, env = "CARAVAN_METRICS", value_parser = parse_metrics_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Also serve the plugin API over TCP with mutual TLS: tcp://IP:PORT (needs
    /// --tls-cert, --tls-key and --tls-client-ca, or --insecure-tcp)
    #[arg(long, env = "CARAVAN_LISTEN")]
    pub listen: Option<String>,
    /// The server's certificate chain (PEM) for --listen
    #[arg(long, env = "CARAVAN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM) for --listen
    #[arg(long, env = "CARAVAN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA whose client certificates are let in (PEM); clients without one are refused
    #[arg(long, env = "CARAVAN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// The client certificate the local dockerd presents: with it (and --tls-docker-key)
    /// the spec is <driver>.json pointing at --listen instead of the .spec
    #[arg(long, env = "CARAVAN_TLS_DOCKER_CERT", requires = "tls_docker_key")]
    pub tls_docker_cert: Option<PathBuf>,
    /// The key of --tls-docker-cert
    #[arg(long, env = "CARAVAN_TLS_DOCKER_KEY", requires = "tls_docker_cert")]
    pub tls_docker_key: Option<PathBuf>,
    /// The CA dockerd checks the server's certificate against [default: --tls-client-ca]
    #[arg(long, env = "CARAVAN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Serve --listen as plain TCP, without TLS: anyone who can reach the port can create,
    /// mount and remove volumes. For test beds only; warned at every start
    #[arg(long, env = "CARAVAN_INSECURE_TCP")]
    pub insecure_tcp: bool,
    /// The local dockerd's API socket. Once serving, the daemon asks that dockerd for this
    /// driver's volumes (again after each dockerd restart), so that dockerd lists the
    /// driver and Swarm can schedule tasks with caravan volumes here; "none" not to
    /// [default: /var/run/docker.sock]
    #[arg(long, env = "CARAVAN_DOCKER_SOCKET")]
    pub docker_socket: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace [default: info]
    #[arg(long, env = "CARAVAN_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Config file (TOML with the same keys, in snake_case; /dev/null for none)
    /// [default: /etc/caravan/caravan.toml if it exists]
    #[arg(long, env = "CARAVAN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `caravan plugin`: the daemon as Docker runs its managed plugin (etc/plugin/config.json).
/// Settings come from the plugin's environment, set with `docker plugin set NAME KEY=VALUE`;
/// an empty value (the config's default) means unset.
#[derive(Debug, Clone, Default, Args)]
pub struct PluginArgs {
    /// The shared root inside the plugin: the `root` mount's destination, /export, unless
    /// NFS is set
    #[arg(long, env = "ROOT", default_value = "/export")]
    pub root: PathBuf,
    /// This host's node name (required: the plugin's own host name is not the host's)
    #[arg(long, env = "NODE")]
    pub node: Option<String>,
    /// An NFSv4 export the plugin mounts itself, SERVER:/EXPORT (instead of the root mount)
    #[arg(long, env = "NFS")]
    pub nfs: Option<String>,
    /// Kernel NFS options over the defaults
    #[arg(long, env = "NFS_OPTIONS")]
    pub nfs_options: Option<String>,
    /// --dead-after
    #[arg(long, env = "DEAD_AFTER")]
    pub dead_after: Option<String>,
    /// --log-level
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// Where dockerd looks for a managed plugin's socket (config.json's `socket`).
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/caravan.sock";
/// Inside the plugin; the mounts folder under it is config.json's `PropagatedMount`.
pub const PLUGIN_STATE_DIR: &str = "/var/lib/caravan";

impl PluginArgs {
    pub fn resolve(self) -> Result<DaemonConfig> {
        let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let node = set(self.node).ok_or_else(|| {
            Error::invalid(
                "NODE is not set: give this host's node name with `docker plugin set <plugin> NODE=<name>` (each host its own)",
            )
        })?;
        let nfs = set(self.nfs);
        let dead_after = set(self.dead_after)
            .map(|s| parse_dead_after(&s).map_err(|e| Error::invalid(format!("DEAD_AFTER: {e}"))))
            .transpose()?;
        let args = DaemonArgs {
            root: if nfs.is_some() { None } else { Some(self.root) },
            nfs,
            nfs_options: set(self.nfs_options),
            node: Some(node),
            state_dir: Some(PLUGIN_STATE_DIR.into()),
            socket: Some(PLUGIN_SOCKET.into()),
            dead_after,
            log_level: set(self.log_level),
            config: Some("/dev/null".into()),
            ..Default::default()
        };
        let mut cfg = args.resolve()?;
        cfg.managed_plugin = true;
        // dockerd lists an enabled managed plugin by itself.
        cfg.docker_socket = None;
        Ok(cfg)
    }
}

/// The config file. Unknown keys are refused, so a typo does not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    nfs: Option<String>,
    nfs_options: Option<String>,
    node: Option<String>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    spec_dir: Option<PathBuf>,
    driver_name: Option<String>,
    timeout: Option<String>,
    dead_after: Option<String>,
    fence_wait: Option<String>,
    heartbeat: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    metrics: Option<String>,
    socket_group: Option<String>,
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_docker_cert: Option<PathBuf>,
    tls_docker_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    insecure_tcp: Option<bool>,
    docker_socket: Option<PathBuf>,
    log_level: Option<String>,
}

/// The daemon's resolved settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub root: PathBuf,
    /// True when no root was given and the local default is used.
    pub root_is_default: bool,
    /// The NFS export the daemon mounts at `root` itself (`--nfs`).
    pub nfs: Option<crate::export::nfs::NfsExport>,
    pub nfs_options: Option<String>,
    pub node: String,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub spec_dir: PathBuf,
    pub driver_name: String,
    pub timeout: Duration,
    pub dead_after: Duration,
    /// `--fence-wait`, when given; otherwise derived from the export at start.
    pub fence_wait: Option<Duration>,
    pub heartbeat: Duration,
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// The socket's group (members may read), as a group id.
    pub socket_group: Option<u32>,
    /// The plugin API over TCP (`--listen`), if asked for.
    pub tcp: Option<TcpSettings>,
    /// Run as Docker's managed plugin (`caravan plugin`): dockerd finds the socket through
    /// the plugin's config, so no spec file is written.
    pub managed_plugin: bool,
    /// The local dockerd to tell about the driver (`--docker-socket`), if any.
    pub docker_socket: Option<PathBuf>,
    pub log_level: tracing::Level,
}

/// `--listen` and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSettings {
    pub listen: std::net::SocketAddr,
    /// `None` with `--insecure-tcp`.
    pub tls: Option<crate::api::tls::ServerFiles>,
    /// What the local dockerd presents, for the `.json` spec.
    pub docker: Option<DockerClientFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TcpSettings {
    /// The address the spec gives dockerd: the listening one, or loopback for a wildcard.
    pub fn url(&self) -> String {
        let ip = match self.listen.ip() {
            std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        format!(
            "https://{}",
            std::net::SocketAddr::new(ip, self.listen.port())
        )
    }
}

fn parse_listen(s: &str) -> Result<std::net::SocketAddr> {
    s.strip_prefix("tcp://")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .filter(|a| a.port() != 0)
        .ok_or_else(|| {
            Error::invalid(format!(
                "invalid --listen {}: use tcp://IP:PORT with a port other than 0, e.g. tcp://0.0.0.0:9443 or tcp://[::]:9443",
                crate::core::error::shown(s)
            ))
        })
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; use a duration such as 20s or 1m"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(50) {
        return Err(format!(
            "{s} is out of range: use 1s to 50s (dockerd itself gives up after 60s)"
        ));
    }
    Ok(d)
}

/// Node names: 1 to 64 characters of a-z A-Z 0-9 _ . -, starting with a letter or digit
/// (a host name qualifies). They appear in file names on the export.
pub fn validate_node_name(node: &str) -> Result<()> {
    if crate::core::names::is_safe_token(node, 1, 64, true) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid node name {node:?}: use 1 to 64 characters of a-z A-Z 0-9 _ . -, starting with a letter or digit; pass --node"
        )))
    }
}

fn parse_dead_after(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration such as 15s"))?;
    if d < Duration::from_secs(2) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is out of range: use 2s to 1h"));
    }
    Ok(d)
}

fn parse_fence_wait(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration such as 45s"))?;
    if d > Duration::from_secs(3600) {
        return Err(format!("{s} is out of range: use 0s to 1h"));
    }
    Ok(d)
}

fn parse_heartbeat(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration such as 1s"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err(format!("{s} is out of range: use 100ms to 60s"));
    }
    Ok(d)
}

fn parse_max_connections(s: &str) -> std::result::Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|_| !s.starts_with('+'))
        .and_then(|n| check_max_connections(n).ok())
        .ok_or_else(|| {
            format!("invalid connection limit {s:?}: use a whole number from 8 to 65536")
        })
}

fn check_max_connections(n: usize) -> std::result::Result<usize, String> {
    if (8..=65536).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "invalid connection limit {n}: use a whole number from 8 to 65536"
        ))
    }
}

fn parse_header_timeout(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration such as 10s"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(300) {
        return Err(format!("{s} is out of range: use 1s to 5m"));
    }
    Ok(d)
}

/// `PORT` (loopback: metrics name nodes and counts, and need not leave the host) or
/// `HOST:PORT`.
fn parse_metrics_addr(s: &str) -> std::result::Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    s.parse().map_err(|_| {
        format!("invalid metrics address {s:?}: use a port (served on 127.0.0.1), or HOST:PORT such as 127.0.0.1:9464 or [::1]:9464")
    })
}

/// `--listen` with its TLS files, checked together: TLS files without `--listen`, or
/// `--listen` with neither TLS nor `--insecure-tcp`, are refused.
fn resolve_tcp(
    listen: Option<String>,
    [cert, key, client_ca]: [Option<PathBuf>; 3],
    [docker_cert, docker_key, ca]: [Option<PathBuf>; 3],
    insecure: bool,
) -> Result<Option<TcpSettings>> {
    let any_tls = cert.is_some() || key.is_some() || client_ca.is_some();
    let any_docker = docker_cert.is_some() || docker_key.is_some() || ca.is_some();
    let Some(listen) = listen else {
        if any_tls || any_docker || insecure {
            return Err(Error::invalid(
                "--tls-* and --insecure-tcp go with --listen tcp://IP:PORT, which is not set",
            ));
        }
        return Ok(None);
    };
    let listen = parse_listen(&listen)?;
    let tls = match (cert, key, client_ca, insecure) {
        (Some(cert), Some(key), Some(client_ca), false) => Some(crate::api::tls::ServerFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None, None, true) => None,
        (_, _, _, true) => {
            return Err(Error::invalid(
                "--insecure-tcp serves plain TCP: drop it, or drop the --tls-* files",
            ))
        }
        _ => {
            return Err(Error::invalid(
                "--listen needs --tls-cert, --tls-key and --tls-client-ca (clients must present a certificate that CA signed); --insecure-tcp serves plain TCP instead",
            ))
        }
    };
    let docker = match (docker_cert, docker_key) {
        (Some(cert), Some(key)) => {
            let Some(tls) = &tls else {
                return Err(Error::invalid(
                    "--tls-docker-cert needs TLS, not --insecure-tcp",
                ));
            };
            Some(DockerClientFiles {
                cert,
                key,
                ca: ca.unwrap_or_else(|| tls.client_ca.clone()),
            })
        }
        (None, None) if ca.is_none() => None,
        _ => {
            return Err(Error::invalid(
                "--tls-docker-cert and --tls-docker-key go together (and --tls-ca with them)",
            ))
        }
    };
    Ok(Some(TcpSettings {
        listen,
        tls,
        docker,
    }))
}

/// A group name (or a numeric id) as its id.
fn resolve_group(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(Error::invalid(format!(
            "--socket-group {}: no such group; create it (groupadd) or name an existing one",
            crate::core::error::shown(name)
        ))),
        Err(e) => Err(Error::invalid(format!(
            "--socket-group: looking up the group: {e}"
        ))),
    }
}

fn parse_level(s: &str) -> Result<tracing::Level> {
    s.parse().map_err(|_| {
        Error::invalid(format!(
            "invalid log level {s:?}: use error, warn, info, debug or trace"
        ))
    })
}

impl DaemonArgs {
    /// Merges flags over the config file over defaults, and validates the result.
    pub fn resolve(self) -> Result<DaemonConfig> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        self.resolve_with(file)
    }

    /// [`DaemonArgs::resolve`] with the config file's text given (its name is for
    /// messages only): the decoder of the file, pure apart from reading the host name and
    /// the current directory, so that it can be fuzzed.
    pub fn resolve_text(self, text: &str, origin: &Path) -> Result<DaemonConfig> {
        let file = parse_file(text, origin)?;
        self.resolve_with(file)
    }

    fn resolve_with(self, file: FileConfig) -> Result<DaemonConfig> {
        let state_dir = self
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        // Flags (which clap keeps from naming both) replace the file's choice as a whole.
        let (root, nfs) = if self.root.is_some() || self.nfs.is_some() {
            (self.root, self.nfs)
        } else {
            (file.root, file.nfs)
        };
        if root.is_some() && nfs.is_some() {
            return Err(Error::invalid(
                "the config file sets both root and nfs: keep one (root for an export the host mounts itself, nfs for one caravan mounts)",
            ));
        }
        let nfs = nfs
            .as_deref()
            .map(crate::export::nfs::NfsExport::parse)
            .transpose()?;
        let nfs_options = self.nfs_options.or(file.nfs_options);
        match (&nfs_options, &nfs) {
            (Some(_), None) => return Err(Error::invalid("nfs_options is set without nfs")),
            // Checked now, so a bad option fails before the server is even contacted.
            (Some(o), Some(_)) => {
                crate::export::nfs::mount_options(Some(o), std::net::Ipv4Addr::UNSPECIFIED.into())?;
            }
            _ => {}
        }
        let root_is_default = root.is_none() && nfs.is_none();
        let root = match (&nfs, root) {
            (Some(_), _) => crate::export::nfs::export_dir(&state_dir),
            (None, Some(r)) => r,
            (None, None) => state_dir.join("shared"),
        };
        let node = match self.node.or(file.node) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .map_err(|e| {
                    Error::invalid(format!("cannot read the host name ({e}); pass --node"))
                })?
                .to_string_lossy()
                .into_owned(),
        };
        validate_node_name(&node)?;
        let timeout = match (self.timeout, file.timeout) {
            (Some(t), _) => t,
            (None, Some(s)) => parse_duration(&s)
                .map_err(|e| Error::invalid(format!("timeout in the config file: {e}")))?,
            (None, None) => DEFAULT_TIMEOUT,
        };
        let from_file = |v: Option<String>,
                         parse: fn(&str) -> std::result::Result<Duration, String>,
                         key: &str| {
            v.map(|s| {
                parse(&s).map_err(|e| Error::invalid(format!("{key} in the config file: {e}")))
            })
            .transpose()
        };
        let dead_after = match self.dead_after {
            Some(d) => d,
            None => from_file(file.dead_after, parse_dead_after, "dead_after")?
                .unwrap_or(DEFAULT_DEAD_AFTER),
        };
        let fence_wait = match self.fence_wait {
            Some(d) => Some(d),
            None => from_file(file.fence_wait, parse_fence_wait, "fence_wait")?,
        };
        let heartbeat = match self.heartbeat {
            Some(d) => d,
            None => from_file(file.heartbeat, parse_heartbeat, "heartbeat")?
                .unwrap_or(DEFAULT_HEARTBEAT),
        };
        if heartbeat * 3 > dead_after {
            return Err(Error::invalid(format!(
                "heartbeat {} is too slow for dead-after {}: a live node must beat at least 3 times within dead-after",
                humantime::format_duration(heartbeat),
                humantime::format_duration(dead_after)
            )));
        }
        let max_connections = match self.max_connections.or(file.max_connections) {
            Some(n) => check_max_connections(n)
                .map_err(|e| Error::invalid(format!("max_connections: {e}")))?,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let header_timeout = match self.header_timeout {
            Some(d) => d,
            None => from_file(file.header_timeout, parse_header_timeout, "header_timeout")?
                .unwrap_or(DEFAULT_HEADER_TIMEOUT),
        };
        let metrics = match self.metrics {
            Some(a) => Some(a),
            None => file
                .metrics
                .as_deref()
                .map(|s| {
                    parse_metrics_addr(s)
                        .map_err(|e| Error::invalid(format!("metrics in the config file: {e}")))
                })
                .transpose()?,
        };
        let socket_group = self
            .socket_group
            .or(file.socket_group)
            .map(|name| resolve_group(&name))
            .transpose()?;
        let tcp = resolve_tcp(
            self.listen.or(file.listen),
            [
                self.tls_cert.or(file.tls_cert),
                self.tls_key.or(file.tls_key),
                self.tls_client_ca.or(file.tls_client_ca),
            ],
            [
                self.tls_docker_cert.or(file.tls_docker_cert),
                self.tls_docker_key.or(file.tls_docker_key),
                self.tls_ca.or(file.tls_ca),
            ],
            self.insecure_tcp || file.insecure_tcp.unwrap_or(false),
        )?;
        let log_level = parse_level(
            self.log_level
                .or(file.log_level)
                .as_deref()
                .unwrap_or("info"),
        )?;
        let driver_name = self
            .driver_name
            .or(file.driver_name)
            .unwrap_or_else(|| DEFAULT_DRIVER.into());
        validate_driver_name(&driver_name)?;
        let mut cfg = DaemonConfig {
            root,
            root_is_default,
            nfs,
            nfs_options,
            node,
            state_dir,
            socket: self
                .socket
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            spec_dir: self
                .spec_dir
                .or(file.spec_dir)
                .unwrap_or_else(|| DEFAULT_SPEC_DIR.into()),
            driver_name,
            timeout,
            dead_after,
            fence_wait,
            heartbeat,
            max_connections,
            header_timeout,
            metrics,
            socket_group,
            tcp,
            managed_plugin: false,
            docker_socket: match self.docker_socket.or(file.docker_socket) {
                Some(p) if p.as_os_str() == "none" => None,
                Some(p) if !p.is_absolute() => {
                    return Err(Error::invalid(format!(
                        "--docker-socket {}: give an absolute path (or none)",
                        p.display()
                    )))
                }
                Some(p) => Some(p),
                None => Some(DEFAULT_DOCKER_SOCKET.into()),
            },
            log_level,
        };
        for (what, p) in [
            ("root", &mut cfg.root),
            ("state-dir", &mut cfg.state_dir),
            ("socket", &mut cfg.socket),
            ("spec-dir", &mut cfg.spec_dir),
        ] {
            if !p.is_absolute() {
                *p = std::env::current_dir()
                    .map_err(|e| Error::io("reading the current directory", e))?
                    .join(&*p);
                tracing::debug!("--{what} made absolute: {}", p.display());
            }
        }
        Ok(cfg)
    }
}

/// The largest config file read: the whole key set fits in 2 KiB.
const MAX_CONFIG_BYTES: u64 = 64 << 10;

fn read_file(path: &Path) -> Result<FileConfig> {
    use std::io::Read;
    // `--config /dev/null`: explicitly none (the default file is then not read either).
    if path == Path::new("/dev/null") {
        return Ok(FileConfig::default());
    }
    let reading = |e| Error::io(format!("reading the config file {}", path.display()), e);
    // A regular file only, and a bounded one: a FIFO would block start-up and a device
    // would be read forever.
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(reading)?;
    let meta = file.metadata().map_err(reading)?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!(
            "config file {}: not a regular file of at most {MAX_CONFIG_BYTES} bytes",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES)
        .read_to_string(&mut text)
        .map_err(reading)?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<FileConfig> {
    toml::from_str(text).map_err(|e| {
        Error::invalid(format!(
            "config file {}: {e}accepted keys: root, nfs, nfs_options, node, state_dir, socket, spec_dir, driver_name, timeout, dead_after, fence_wait, heartbeat, max_connections, header_timeout, metrics, socket_group, listen, tls_cert, tls_key, tls_client_ca, tls_docker_cert, tls_docker_key, tls_ca, insecure_tcp, docker_socket, log_level",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_with_file(text: &str) -> (tempfile::TempDir, DaemonArgs) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("caravan.toml");
        std::fs::write(&p, text).unwrap();
        let args = DaemonArgs {
            config: Some(p),
            node: None,
            ..Default::default()
        };
        (d, args)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let (_d, mut args) =
            args_with_file("root = \"/srv/share\"\nnode = \"filenode\"\ntimeout = \"5s\"\n");
        args.node = Some("flagnode".into());
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.node, "flagnode");
        assert_eq!(cfg.root, PathBuf::from("/srv/share"));
        assert!(!cfg.root_is_default);
        assert_eq!(cfg.timeout, Duration::from_secs(5));
        assert_eq!(cfg.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn default_root_is_a_local_folder_under_the_state_dir() {
        let (_d, mut args) = args_with_file("");
        args.node = Some("n1".into());
        args.state_dir = Some("/tmp/st".into());
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.root, PathBuf::from("/tmp/st/shared"));
        assert!(cfg.root_is_default);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let (_d, args) = args_with_file("rooot = \"/x\"\n");
        let err = args.resolve().unwrap_err().to_string();
        assert!(
            err.contains("rooot") && err.contains("accepted keys"),
            "{err}"
        );
        let (_d, args) = args_with_file("timeout = \"5 parsecs\"\nnode = \"n1\"\n");
        assert!(args.resolve().unwrap_err().to_string().contains("timeout"));
        let (_d, mut args) = args_with_file("");
        args.node = Some("bad/node".into());
        assert!(args
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("invalid node name"));
        assert!(parse_duration("90s").is_err());
    }
}
