//! The accept loop, with the limits a socket that anything on the host can connect to
//! needs: every connection costs a file descriptor and a task, so a client that connects
//! and never finishes a request (or 20 000 of them) must not use up the descriptors the
//! heartbeat and the store need, or the memory of the host.
//!
//! - **Connections**: at most [`Limits::max_connections`] are served at once, of which
//!   clients that may only read (see [`Peer`]) hold at most a quarter. Past it the
//!   loop stops accepting (new clients wait in the kernel's backlog, not in this
//!   process) and says so once in the log, until the count falls below the limit again.
//!   The daemon checks at start-up that the limit leaves [`RESERVED_FDS`] descriptors
//!   free under `RLIMIT_NOFILE` (see [`fd_budget`]).
//! - **Header timeout**: a connection must deliver a whole request head within
//!   [`Limits::header_timeout`] of being accepted or of its previous answer, and the
//!   body within the same time again; otherwise it is closed. hyper measures the head
//!   from the moment it starts waiting, so this is also the idle timeout of a keep-alive
//!   connection. dockerd reconnects at once (and retries a call whose connection closed
//!   under it), so closing idle connections costs it nothing.
//! - **Body**: at most [`MAX_BODY`] bytes; a longer one is refused with 413 before it is
//!   read whole.
//! - **Shutdown**: idle connections are closed at once, calls in flight are answered,
//!   and a half-sent request is not waited for.
//!
//! hyper serves each connection; warp's filter ([`super::routes`]) is called as a tower
//! service ([`warp::service`]), the way warp documents for custom servers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use warp::http::{Request, StatusCode};

use super::routes::reply;
use crate::core::error::{Error, Result};

/// The largest request body served: the biggest real request (a Create with every option)
/// is a few hundred bytes.
pub const MAX_BODY: usize = 1 << 20;

/// The largest request head: dockerd's are about 200 bytes.
const MAX_HEAD: usize = 16 << 10;

/// File descriptors kept free of connections: the store (sled's files, the lock, the
/// hint), the heartbeat and the reads of the other nodes' heartbeats, mounts, logs.
pub const RESERVED_FDS: u64 = 256;

/// What one daemon serves at most; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (the soft default of 1024
/// is a leftover of `select(2)`, which nothing here uses) and checks that
/// `max_connections` leaves [`RESERVED_FDS`] free. Returns the soft limit now in force.
pub fn fd_budget(max_connections: usize) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| Error::io("reading RLIMIT_NOFILE", e.into()))?;
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("could not raise RLIMIT_NOFILE from {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let needed = (max_connections as u64).saturating_add(RESERVED_FDS);
    if needed > soft {
        return Err(Error::invalid(format!(
            "{max_connections} connections (--max-connections, per listener) need {needed} file descriptors ({RESERVED_FDS} are kept for the store and the heartbeat), but this process may open only {soft} (ulimit -n, or LimitNOFILE= in the systemd unit): raise that limit or lower --max-connections"
        )));
    }
    Ok(soft)
}

/// Who is at the other end of a connection, for requests to check
/// ([`Peer::may_change`]): on the unix socket as the kernel says (SO_PEERCRED), over TLS
/// a client whose certificate the client CA signed. Every request carries it as an
/// extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    /// The peer's user id on a unix socket; `None` over TCP.
    pub uid: Option<u32>,
    /// A TCP client let in by a verified client certificate (or by `--insecure-tcp`).
    pub trusted_remote: bool,
}

impl Peer {
    /// Root, the user the daemon itself runs as, or a trusted remote client: who may
    /// change volumes.
    pub fn may_change(&self) -> bool {
        self.trusted_remote
            || self
                .uid
                .is_some_and(|u| u == 0 || u == nix::unistd::geteuid().as_raw())
    }
}

/// A connection accepted but not yet ready to serve (a TLS handshake to complete), run
/// in the connection's own task within [`handshake_timeout`].
pub type Pending<C> =
    std::pin::Pin<Box<dyn Future<Output = std::io::Result<(C, Peer)>> + Send + 'static>>;

/// A connection just accepted: what makes it ready, and where it comes from (an IP
/// address over TCP, for the per-peer cap on handshakes).
pub struct Accepted<C> {
    pub pending: Pending<C>,
    pub from: Option<std::net::IpAddr>,
}

/// A listening socket the loop accepts connections from.
pub trait Accept: Send {
    type Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// Whether a connection must complete a handshake (TLS) before it is served. Such
    /// connections are accepted into a pool of their own ([`handshake_slots`]), at most
    /// [`PER_PEER_HANDSHAKES`] from one address, for at most [`handshake_timeout`]:
    /// peers that never finish one (or never present a certificate) cannot hold the
    /// connections that serve authenticated clients.
    const HANDSHAKES: bool = false;
    fn accept(&self) -> impl Future<Output = std::io::Result<Accepted<Self::Conn>>> + Send;
}

/// Handshakes in flight from one address at most; more are closed at once.
pub const PER_PEER_HANDSHAKES: usize = 16;

/// Connections in a handshake at once, at most, beside the `max_connections` served.
pub fn handshake_slots(max_connections: usize) -> usize {
    max_connections.max(64)
}

/// How long a handshake may take: a TLS handshake on a network takes milliseconds; a
/// peer that takes seconds is not completing one.
pub fn handshake_timeout(header_timeout: Duration) -> Duration {
    header_timeout.min(Duration::from_secs(3))
}

impl Accept for UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Accepted<Self::Conn>> {
        let (s, _) = UnixListener::accept(self).await?;
        // A peer whose credentials cannot be read counts as nobody in particular.
        let uid = s.peer_cred().ok().map(|c| c.uid());
        let peer = Peer {
            uid,
            trusted_remote: false,
        };
        Ok(Accepted {
            pending: Box::pin(std::future::ready(Ok((s, peer)))),
            from: None,
        })
    }
}

/// Plain TCP: the metrics endpoint, and the plugin API with `--insecure-tcp`.
pub struct PlainTcp {
    pub tcp: tokio::net::TcpListener,
    /// Whether its clients may change volumes (`--insecure-tcp`).
    pub trusted: bool,
}

impl Accept for PlainTcp {
    type Conn = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Accepted<Self::Conn>> {
        let (s, from) = self.tcp.accept().await?;
        // Small requests and answers: no Nagle delay.
        let _ = s.set_nodelay(true);
        let peer = Peer {
            uid: None,
            trusted_remote: self.trusted,
        };
        Ok(Accepted {
            pending: Box::pin(std::future::ready(Ok((s, peer)))),
            from: Some(from.ip()),
        })
    }
}

impl Accept for crate::api::tls::TlsListener {
    type Conn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    const HANDSHAKES: bool = true;
    async fn accept(&self) -> std::io::Result<Accepted<Self::Conn>> {
        let (s, from) = self.tcp.accept().await?;
        // A handshake is several small writes each way: with Nagle's delay and delayed
        // ACKs it took about 44 ms (tests/benches/transports.rs).
        let _ = s.set_nodelay(true);
        let acceptor = self.acceptor.clone();
        let pending = Box::pin(async move {
            match acceptor.accept(s).await {
                Ok(tls) => Ok((
                    tls,
                    Peer {
                        uid: None,
                        trusted_remote: true,
                    },
                )),
                // A client that closed before finishing the handshake was refused
                // nothing (dockerd's HTTP client drops a connection it dialed but no
                // longer needs): not worth a warning.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(client = %from, "a client closed during the TLS handshake: {e}");
                    Err(e)
                }
                Err(e) => {
                    tracing::warn!(client = %from, "TLS handshake refused: {e}");
                    Err(e)
                }
            }
        });
        Ok(Accepted {
            pending,
            from: Some(from.ip()),
        })
    }
}

/// Handshakes in flight per address (see [`PER_PEER_HANDSHAKES`]).
#[derive(Default)]
struct PeerHandshakes(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PeerHandshakes {
    /// Counts one more handshake from `from`, unless it has its share in flight.
    fn begin(self: &Arc<Self>, from: std::net::IpAddr) -> Option<PeerHandshake> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(from).or_insert(0);
        if *n >= PER_PEER_HANDSHAKES {
            return None;
        }
        *n += 1;
        Some(PeerHandshake(self.clone(), from))
    }
}

/// One handshake counted against its address, until dropped.
struct PeerHandshake(Arc<PeerHandshakes>, std::net::IpAddr);

impl Drop for PeerHandshake {
    fn drop(&mut self) {
        let mut map = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and waits at most
/// `drain` for the calls in flight.
pub async fn serve<L: Accept, F>(
    listener: L,
    filter: F,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    F: warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Clients that may only read get a quarter of the connections: they cannot hold every
    // slot and keep dockerd (root) waiting.
    let readers = Arc::new(Semaphore::new((limits.max_connections / 4).max(1)));
    // Where connections wait to be accepted: a serving slot, or for a listener whose
    // connections need a handshake first, a handshake slot (see Accept::HANDSHAKES).
    let gate = if L::HANDSHAKES {
        Arc::new(Semaphore::new(handshake_slots(limits.max_connections)))
    } else {
        slots.clone()
    };
    let handshake_limit = if L::HANDSHAKES {
        handshake_timeout(limits.header_timeout)
    } else {
        limits.header_timeout
    };
    let per_peer = Arc::new(PeerHandshakes::default());
    let at_limit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (calls, _) = tokio::sync::watch::channel(0usize);
    let calls = Arc::new(calls);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first, then accept: past the limit, clients wait in the backlog and
        // cost this process nothing.
        let permit = match gate.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                note_limit(&at_limit, &limits, L::HANDSHAKES);
                tokio::select! {
                    permit = gate.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: nothing to do but wait for descriptors to free.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let counted = match (L::HANDSHAKES, accepted.from) {
            (true, Some(from)) => match per_peer.begin(from) {
                Some(counted) => Some(counted),
                None => {
                    tracing::debug!(client = %from, "closed a connection: {PER_PEER_HANDSHAKES} handshakes from this address are in flight");
                    continue;
                }
            },
            _ => None,
        };
        let (filter, calls, watcher) = (filter.clone(), calls.clone(), graceful.watcher());
        let (readers, slots, at_limit) = (readers.clone(), slots.clone(), at_limit.clone());
        tokio::spawn(async move {
            let (stream, peer) = match tokio::time::timeout(handshake_limit, accepted.pending).await
            {
                Ok(Ok(ready)) => ready,
                // Logged where it failed (a TLS handshake says why).
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(
                        "closed a connection that did not complete its handshake in time"
                    );
                    return;
                }
            };
            drop(counted);
            // After a handshake: a serving slot, waited for at most the header timeout
            // (the handshake slot is kept meanwhile, so the waiting are bounded too).
            let _slot = if L::HANDSHAKES {
                let slot = match slots.clone().try_acquire_owned() {
                    Ok(slot) => Ok(slot),
                    Err(_) => {
                        note_limit(&at_limit, &limits, false);
                        tokio::time::timeout(limits.header_timeout, slots.clone().acquire_owned())
                            .await
                            .map(|s| s.expect("the semaphore is never closed"))
                    }
                };
                drop(permit);
                match slot {
                    Ok(slot) => slot,
                    Err(_) => {
                        tracing::debug!("closed an authenticated connection: no connection slot freed within the header timeout");
                        return;
                    }
                }
            } else {
                permit
            };
            if at_limit.load(std::sync::atomic::Ordering::Relaxed)
                && slots.available_permits() >= limits.max_connections / 2
                && at_limit.swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!("connections are below the limit again");
            }
            let _reader = if peer.may_change() {
                None
            } else {
                match readers.try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        tracing::debug!("closed a read-only client's connection: their share of connections is in use");
                        return;
                    }
                }
            };
            let service = Connection {
                warp: warp::service(filter),
                body_timeout: limits.header_timeout,
                calls,
                peer,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                log_connection_end(&e);
            }
        });
    }
    drop(listener);
    // Idle connections close now and the others after their answer. Only calls are
    // waited for: a connection still sending its request (or sending nothing) is not.
    let closing = graceful.shutdown();
    let mut in_flight = calls.subscribe();
    tokio::select! {
        _ = closing => {}
        _ = in_flight.wait_for(|n| *n == 0) => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(calls = *calls.borrow(), "calls still in flight after {}; exiting anyway", humantime::format_duration(drain));
        }
    }
}

/// Says once that a limit was reached (until the connections fall below it again).
fn note_limit(at_limit: &std::sync::atomic::AtomicBool, limits: &Limits, handshakes: bool) {
    if at_limit.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if handshakes {
        tracing::warn!(
            handshakes = handshake_slots(limits.max_connections),
            "handshake limit reached: new connections wait until one completes or times out (after {})",
            humantime::format_duration(handshake_timeout(limits.header_timeout))
        );
    } else {
        tracing::warn!(
            max_connections = limits.max_connections,
            "connection limit reached: new connections wait until one closes (idle ones close after {}); if this is dockerd's own load, raise --max-connections",
            humantime::format_duration(limits.header_timeout)
        );
    }
}

/// Counts a call in flight from its head to its answer (or until it is dropped).
struct CallInFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl CallInFlight {
    fn start(calls: &Arc<tokio::sync::watch::Sender<usize>>) -> Self {
        calls.send_modify(|n| *n += 1);
        CallInFlight(calls.clone())
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A connection that ends badly is the client's business (it went away, or sent
/// something that is not HTTP): worth a debug line, never an error.
fn log_connection_end(e: &hyper::Error) {
    if e.is_timeout() {
        tracing::debug!("closed a connection that sent no complete request in time");
    } else if e.is_parse() || e.is_parse_too_large() {
        tracing::debug!("closed a connection that sent something other than HTTP/1.1: {e}");
    } else {
        tracing::debug!("a connection ended: {e}");
    }
}

/// One connection's service: reads the body within its limits, then hands the request to
/// warp.
#[derive(Clone)]
struct Connection<S> {
    warp: S,
    body_timeout: Duration,
    calls: Arc<tokio::sync::watch::Sender<usize>>,
    peer: Peer,
}

impl<S> hyper::service::Service<Request<Incoming>> for Connection<S>
where
    S: tower_service::Service<
            Request<Full<Bytes>>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = warp::reply::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut warp = self.warp.clone();
        let body_timeout = self.body_timeout;
        let call = CallInFlight::start(&self.calls);
        let peer = self.peer;
        Box::pin(async move {
            let _call = call;
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(peer);
            let declared = parts
                .headers
                .get(warp::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_BODY as u64) {
                return Ok(too_large());
            }
            let read = tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY).collect());
            let bytes = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Ok(too_large()),
                Ok(Err(e)) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        json!({ "Err": format!("could not read the request body: {e}") }),
                    ))
                }
                Err(_) => {
                    return Ok(reply(
                        StatusCode::REQUEST_TIMEOUT,
                        json!({ "Err": format!("the request body did not arrive within {}", humantime::format_duration(body_timeout)) }),
                    ))
                }
            };
            warp.call(Request::from_parts(parts, Full::new(bytes)))
                .await
        })
    }
}

fn too_large() -> warp::reply::Response {
    let msg = format!(
        "request body over {MAX_BODY} bytes: plugin and control requests are a few hundred bytes"
    );
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "Err": msg, "error": msg }),
    )
}
