//! Start-up, the heartbeat thread and graceful shutdown of `caravan daemon` (the socket
//! and the HTTP glue are in [`crate::api::server`]).
//!
//! Start: prepare the shared root and the node's state folder, take the node-name lock and
//! beat, start the heartbeat thread and the store, reconcile this node's mounts, bind the
//! socket (mode 0600), write the spec file, serve.
//! Shutdown (SIGTERM or SIGINT): stop accepting, let in-flight calls finish (bounded by the
//! call timeout), remove the socket and the spec file, stop the store, exit 0. Bind mounts stay: containers
//! that use them keep running, and the next start counts them again.
//!
//! - [`config`]: daemon settings from flags, environment and the config file;
//! - [`spec`]: the `.spec` file that lets dockerd find the plugin;
//! - [`systemd`]: socket activation and readiness notification.

pub mod config;
pub mod spec;
pub mod systemd;

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::node::Nodes;
use crate::cluster::store::Store;
use crate::core::error::{Error, IoContext, Result};
use crate::core::liveness::HeartbeatState;
use crate::daemon::config::DaemonConfig;
use crate::export::health::Health;
use crate::export::layout::{NodeLayout, SharedLayout};
use crate::ops::service::Service;
use crate::runtime::deadline::blocking as run_blocking;
use crate::runtime::metrics::Metrics;

/// Runs the daemon until `shutdown` resolves (normally a signal; see [`shutdown_signal`]).
pub async fn run(
    cfg: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Polled during the start too (see wait_if_the_name_ran_elsewhere), then by the servers.
    let mut shutdown = Box::pin(shutdown);
    // Before anything is started, mounted or deleted. A socket passed by systemd is
    // served as it is; otherwise --socket is checked (and bound later).
    let activated = crate::daemon::systemd::activated_socket()?;
    let socket_path = match &activated {
        Some((_, path)) => {
            if *path != cfg.socket {
                tracing::warn!(passed = %path.display(), socket = %cfg.socket.display(), "systemd passed a socket on another path than --socket; serving the one passed (the spec file names it)");
            }
            path.clone()
        }
        None => {
            crate::api::server::check_socket_path(&cfg.socket)?;
            cfg.socket.clone()
        }
    };
    // Every listener serves up to its own limit: the unix socket, --listen with the same
    // limit (and as many more in a TLS handshake, see server::Accept::HANDSHAKES), and
    // the metrics endpoint's 16.
    let connections = cfg.max_connections
        + if cfg.tcp.is_some() {
            cfg.max_connections + crate::api::server::handshake_slots(cfg.max_connections)
        } else {
            0
        }
        + if cfg.metrics.is_some() {
            METRICS_CONNECTIONS
        } else {
            0
        };
    let fds = crate::api::server::fd_budget(connections)?;
    // The plugin API over TCP: its TLS files are read and its port bound now, so that a
    // wrong file or a port in use fails the start before anything else.
    let tcp_listener = match &cfg.tcp {
        Some(tcp) => {
            let acceptor = tcp
                .tls
                .as_ref()
                .map(crate::api::tls::server_config)
                .transpose()?
                .map(tokio_rustls::TlsAcceptor::from);
            let listener = std::net::TcpListener::bind(tcp.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| Error::io(format!("binding --listen {}", tcp.listen), e))?;
            Some((listener, acceptor, tcp))
        }
        None => None,
    };
    // Bound now, so that a port in use fails the start before anything else.
    let metrics_listener = cfg
        .metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map(|l| (l, addr))
                .map_err(|e| {
                    Error::io(format!("binding the metrics address {addr} (--metrics)"), e)
                })
        })
        .transpose()?;
    tracing::debug!(
        open_files = fds,
        max_connections = cfg.max_connections,
        "file descriptor budget"
    );
    let nfs_mounted = match &cfg.nfs {
        Some(export) => {
            let (export, options, target) =
                (export.clone(), cfg.nfs_options.clone(), cfg.root.clone());
            let what = format!("mounting the NFS export {}:{}", export.server, export.path);
            run_blocking(&what, cfg.timeout, move || {
                crate::export::nfs::mount(&export, options.as_deref(), &target)
            })
            .await?
        }
        None => false,
    };
    let shared = SharedLayout::new(&cfg.root);
    if cfg.root_is_default {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&cfg.root)
            .ctx(|| format!("creating the local root {}", cfg.root.display()))?;
    }
    let mut local = NodeLayout {
        state_dir: cfg.state_dir.clone(),
    };
    local.init()?;
    // Mountpoints are compared with /proc/self/mountinfo, which shows resolved paths: a
    // state folder reached through a symlink would never match.
    if let Ok(resolved) = std::fs::canonicalize(&local.state_dir) {
        local.state_dir = resolved;
    }

    // Everything that touches the export before serving, within the call timeout: a
    // frozen export makes the daemon exit with a clear error instead of hanging in its
    // start-up (a service manager then shows why, and can retry). The thread that gave up
    // stays blocked in the kernel until the export answers; the daemon does not wait.
    let health = Health::new(stall_after(cfg.timeout));
    let (node, timeout, heartbeat, dead_after, fence_wait, h) = (
        cfg.node.clone(),
        cfg.timeout,
        cfg.heartbeat,
        cfg.dead_after,
        cfg.fence_wait,
        health.clone(),
    );
    // The lease on exclusive volumes, renewed by every beat, and the keeper that fences
    // this node's containers when it runs out (see crate::host::fence): started before the
    // first beat, so that nothing is ever granted here without it.
    let lease = Arc::new(crate::host::fence::Lease::new(
        &local.state_dir,
        dead_after.saturating_sub(heartbeat),
    ));
    // Never fatal: without a keeper the daemon still refuses second containers and waits
    // the fence wait; `caravan info` says NO FENCE KEEPER, and every tick tries again.
    if let Err(e) = crate::host::fence::ensure_keeper(&local.state_dir) {
        tracing::error!("the fence keeper could not be started (tried again every heartbeat): {e}");
    }
    let state_dir = local.state_dir.clone();
    let metrics = Arc::new(Metrics::default());
    let counts = metrics.clone();
    let what = format!("checking the shared root {}", cfg.root.display());
    let (nodes, store) = run_blocking(&what, cfg.timeout, move || {
        // Warns, among other things, that a local root (such as the default) is not shared.
        let root_info = crate::export::root::check(&shared, &node, timeout / 2)?;
        tracing::info!(root = %shared.root.display(), fs_type = %root_info.fs_type, source = %root_info.source, shared = root_info.shared, "shared root checked");
        // Takes the node-name lock first: a second daemon with a live node's name stops here.
        let nodes = Arc::new(Nodes::new(&shared, &node, heartbeat, dead_after, counts.clone())?);
        let bound = crate::host::fence::write_bound(&root_info.fs_type, &root_info.options, root_info.shared);
        let (wait, from) = match (fence_wait, bound.wait) {
            (Some(given), _) => (given, format!("--fence-wait; the export says: {}", bound.why)),
            (None, Some(derived)) => (derived, bound.why),
            (None, None) => {
                tracing::warn!("takeovers of exclusive volumes cannot wait for a dead holder's in-flight writes: {}; until then they wait --dead-after only", bound.why);
                (Duration::ZERO, format!("UNBOUNDED: {}", bound.why))
            }
        };
        tracing::info!(fence_wait_secs = wait.as_secs_f64(), "takeovers wait --dead-after plus this: {from}");
        nodes.set_fence_wait(wait, from);
        nodes.set_lease(lease);
        nodes.round()?;
        h.set_root(root_info);
        // The store gets half the call budget, so that a call that waited for the lock
        // still has time left to bind-mount and answer.
        let store = Store::start(shared, timeout / 2, Some(nodes.clone()), h, counts)?;
        Ok((nodes, store))
    })
    .await?;
    let beating = Arc::new(std::sync::atomic::AtomicBool::new(true));
    start_heartbeat(nodes.clone(), health.clone(), beating.clone())?;
    if !wait_if_the_name_ran_elsewhere(&nodes, &mut shutdown).await {
        return Ok(());
    }
    let svc = Service::start(
        cfg.node.clone(),
        store.clone(),
        local,
        cfg.timeout / 2,
        nodes.clone(),
        health.clone(),
        metrics,
    )
    .await?;
    // Its reconcile has run: whatever the name's last daemon held is judged as this one's.
    nodes.name_taken_over();
    let fencing = tokio::spawn(fence_loop(nodes.clone(), svc.clone(), state_dir));
    // Other nodes' commits are applied once per heartbeat interval even while no call
    // asks, so that the next read rarely has journal entries to read first.
    let keeping_current = {
        let (store, every) = (store.clone(), nodes.interval());
        tokio::spawn(async move { store.keep_current(every).await })
    };

    let socket_activated = activated.is_some();
    let listener = match activated {
        Some((listener, _)) => listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
            .map_err(|e| Error::io("serving the socket systemd passed", e))?,
        None => crate::api::server::bind_socket(&cfg.socket, cfg.socket_group)?,
    };
    let endpoint = match cfg
        .tcp
        .as_ref()
        .and_then(|t| t.docker.as_ref().map(|d| (t, d)))
    {
        Some((tcp, docker)) => spec::Endpoint::Tls {
            addr: tcp.url(),
            ca: docker.ca.clone(),
            cert: docker.cert.clone(),
            key: docker.key.clone(),
        },
        None => spec::Endpoint::Unix(socket_path.clone()),
    };
    // A managed plugin is found through its config, not a spec file.
    let spec_path = if cfg.managed_plugin {
        PathBuf::from("(managed plugin: none)")
    } else {
        spec::write(&cfg.spec_dir, &cfg.driver_name, &endpoint)?
    };
    tracing::info!(
        node = %cfg.node,
        root = %cfg.root.display(),
        socket = %socket_path.display(),
        socket_activated,
        spec = %spec_path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "caravan daemon serving"
    );
    crate::daemon::systemd::notify_ready(&format!(
        "serving {} as node {}",
        socket_path.display(),
        cfg.node
    ));
    let shutdown = async move {
        shutdown.await;
        crate::daemon::systemd::notify_stopping();
    };

    // Serve until the signal; then stop accepting and give in-flight calls (each bounded
    // by the call timeout) a little more than that to answer.
    let limits = crate::api::server::Limits {
        max_connections: cfg.max_connections,
        header_timeout: cfg.header_timeout,
    };
    // Both servers stop on the one signal.
    let (stop, _) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics = match metrics_listener {
        Some((tcp, addr)) => {
            let tcp = tokio::net::TcpListener::from_std(tcp)
                .map_err(|e| Error::io(format!("serving the metrics address {addr}"), e))?;
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "metrics are served beyond this host (no authentication): keep the port firewalled");
            }
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            let metrics_limits = crate::api::server::Limits {
                max_connections: METRICS_CONNECTIONS,
                header_timeout: cfg.header_timeout,
            };
            Some(tokio::spawn(crate::api::server::serve(
                crate::api::server::PlainTcp {
                    tcp,
                    trusted: false,
                },
                crate::api::server::metrics_routes(svc.clone(), cfg.timeout),
                metrics_limits,
                stopped(stop.subscribe()),
                Duration::from_secs(1),
            )))
        }
        _ => None,
    };
    let remote = match tcp_listener {
        Some((listener, acceptor, tcp)) => {
            let tcp_stream = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::io(format!("serving --listen {}", tcp.listen), e))?;
            let routes = crate::api::server::routes(svc.clone(), cfg.timeout, true);
            let stopped_remote = stopped(stop.subscribe());
            let drain = cfg.timeout + Duration::from_secs(1);
            Some(match acceptor {
                Some(acceptor) => {
                    tracing::info!(listen = %tcp.listen, "serving the plugin API over TCP with mutual TLS");
                    let l = crate::api::tls::TlsListener {
                        tcp: tcp_stream,
                        acceptor,
                    };
                    tokio::spawn(crate::api::server::serve(
                        l,
                        routes,
                        limits,
                        stopped_remote,
                        drain,
                    ))
                }
                None => {
                    tracing::warn!(listen = %tcp.listen, "--insecure-tcp: serving the plugin API over plain TCP; anyone who can reach this port can create, mount and remove volumes");
                    let l = crate::api::server::PlainTcp {
                        tcp: tcp_stream,
                        trusted: true,
                    };
                    tokio::spawn(crate::api::server::serve(
                        l,
                        routes,
                        limits,
                        stopped_remote,
                        drain,
                    ))
                }
            })
        }
        _ => None,
    };
    if let Some(socket) = &cfg.docker_socket {
        svc.set_docker_socket(socket.clone());
    }
    // Serving already (the listener is bound): dockerd's list call is answered.
    let announcing = cfg.docker_socket.clone().map(|socket| {
        tokio::spawn(crate::host::dockerd::announce(
            socket,
            cfg.driver_name.clone(),
        ))
    });
    let rx = stop.subscribe();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    crate::api::server::serve(
        listener,
        crate::api::server::routes(svc.clone(), cfg.timeout, false),
        limits,
        stopped(rx),
        cfg.timeout + Duration::from_secs(1),
    )
    .await;
    if let Some(a) = announcing {
        a.abort();
    }
    for server in [metrics, remote].into_iter().flatten() {
        let _ = server.await;
    }
    // A socket systemd listens on stays, and so does the spec file that names it: the
    // next call queues there and systemd starts caravan again to serve it.
    if !socket_activated {
        if let Err(e) = std::fs::remove_file(&socket_path) {
            tracing::warn!("removing {}: {e}", socket_path.display());
        }
        if !cfg.managed_plugin {
            if let Err(e) = spec::remove(&cfg.spec_dir, &cfg.driver_name, &endpoint) {
                tracing::warn!("{e}");
            }
        }
    }
    fencing.abort();
    keeping_current.abort();
    // Copies end before this node says it left: others may then clean what it made.
    svc.stop_copies().await;
    beating.store(false, std::sync::atomic::Ordering::SeqCst);
    // "Left" lets others take this node's exclusive volumes at once: not while containers
    // here still use one. Then this node only stops beating: a daemon started again within
    // its lease keeps them, and otherwise the fence keeper stops those containers before
    // anyone may take the volumes over.
    let held = nodes.lease().map(|l| l.volumes()).unwrap_or_default();
    if held.is_empty() {
        let leaving = nodes.clone();
        match run_blocking("marking this node as left", cfg.timeout / 2, move || {
            leaving.beat(HeartbeatState::Left)
        })
        .await
        {
            Ok(()) => tracing::info!("marked this node as left"),
            Err(e) => tracing::warn!("{e}"),
        }
    } else {
        tracing::warn!(volumes = %held.join(", "), lease_secs = nodes.lease_term().as_secs_f64(), "not marking this node as left: containers here use exclusive volumes it holds; a daemon started again within the lease keeps them, else the fence keeper stops those containers when it runs out");
    }
    let stopper = store.clone();
    let _ = crate::runtime::deadline::unbounded("stopping the store", move || stopper.stop()).await;
    if nfs_mounted {
        let target = cfg.root.clone();
        // Lazily when busy: a container still using a volume from it keeps working.
        match run_blocking("unmounting the NFS export", cfg.timeout / 2, move || {
            crate::export::mounts::unbind(&target)
        })
        .await
        {
            Ok(()) => tracing::info!("unmounted the NFS export"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    tracing::info!("caravan daemon stopped");
    Ok(())
}

/// Connections the metrics endpoint serves at once (Prometheus scrapes one at a time).
const METRICS_CONNECTIONS: usize = 16;

/// A name whose last daemon ran on another machine and did not stop cleanly: that
/// machine's containers may still write until its fence keeper stops them, and their
/// in-flight writes may land until the fence wait has passed. Nothing of the name's is
/// taken over (the start's reconcile drops the mounts and holds it does not find bound
/// here) before the takeover wait has passed, beating meanwhile (found by the simulation:
/// taken at once, a volume was granted elsewhere while the first machine's container still
/// wrote to it). Until the start has reconciled, the beats say so (`taken_from`), so that a
/// daemon restarted meanwhile waits again. Returns `false` when `shutdown` came first: the
/// daemon then stops without writing `left` (it still owes the wait).
async fn wait_if_the_name_ran_elsewhere(
    nodes: &Nodes,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> bool {
    let Some(other) = nodes.name_taken_from() else {
        return true;
    };
    let wait = nodes.takeover_after();
    let other = crate::core::error::shown(other).to_string();
    tracing::warn!(
        node = %nodes.me(),
        other_machine = %other,
        wait_secs = wait.as_secs_f64(),
        "this node's name was last used by a daemon on another machine that did not stop cleanly; its containers may still be writing there until its fence keeper stops them, so this daemon takes none of the name's volumes over before the takeover wait (--dead-after plus the fence wait) has passed; it serves once that is over"
    );
    crate::daemon::systemd::notify_waiting(
        &format!(
            "waiting {}s: node name {} was last used on machine {other}",
            wait.as_secs(),
            nodes.me()
        ),
        wait,
    );
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = shutdown => {
            tracing::info!("stopping while waiting to take the node's name over: the next start waits again");
            false
        }
    }
}

/// Starts the heartbeat thread: every interval it writes this node's heartbeat and reads
/// everyone else's ([`Nodes::round`]). It is an OS thread of its own, doing nothing else, so
/// that nothing (fencing, store reads, usage walks, a busy async runtime or blocking pool)
/// can make a live node look silent. A round blocked on a stalled export blocks only this
/// thread; [`Health`] reports it.
fn start_heartbeat(
    nodes: Arc<Nodes>,
    health: Arc<Health>,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("caravan-heartbeat".into())
        .spawn(move || {
            let mut next = std::time::Instant::now();
            // A failure is logged when it begins or changes, not every round; the end of
            // it once, with how many rounds failed.
            let mut failing: Option<(String, u64)> = None;
            while running.load(std::sync::atomic::Ordering::SeqCst) {
                next += nodes.interval();
                match health.watch("writing the heartbeat", || nodes.round()) {
                    Err(e) => {
                        let e = e.to_string();
                        match &mut failing {
                            Some((last, n)) if *last == e => *n += 1,
                            _ => {
                                tracing::warn!("heartbeat: {e}");
                                failing = Some((e, 1));
                            }
                        }
                    }
                    Ok(()) => {
                        if let Some((_, n)) = failing.take() {
                            tracing::info!(failed_rounds = n, "heartbeat: written again");
                        }
                    }
                }
                let now = std::time::Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    // A round that overran its interval: start again from now, not in a burst.
                    next = now;
                }
            }
        })
        .map(drop)
        .map_err(|e| Error::io("starting the heartbeat thread", e))
}

/// Every heartbeat interval, gives up exclusive volumes another node took over (and
/// re-validates after a lapse of this node's heartbeat), see [`Service::fence`]; and after
/// a reconnect to the export, mounts again what was mounted from the old connection, see
/// [`Service::follow_reconnects`].
async fn fence_loop(nodes: Arc<Nodes>, svc: Arc<Service>, state_dir: PathBuf) {
    let mut tick = tokio::time::interval(nodes.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keeper_failed = false;
    loop {
        tick.tick().await;
        // The keeper outlives daemons; one that was killed is started again.
        match crate::host::fence::ensure_keeper(&state_dir) {
            Ok(()) => keeper_failed = false,
            Err(e) if !keeper_failed => {
                tracing::error!("the fence keeper is not running and could not be started: {e}");
                keeper_failed = true;
            }
            Err(_) => {}
        }
        svc.fence().await;
        svc.follow_reconnects().await;
    }
}

/// How long an operation on the export may wait before the export counts as stalled:
/// a quarter of the call timeout, within 2 to 10 s (5 s by default). Past it, reads
/// answer from the last known metadata and mutations fail at once.
pub fn stall_after(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_secs(2), Duration::from_secs(10))
}

/// Resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::io("installing the SIGINT handler", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}
