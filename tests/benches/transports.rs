//! What the ways of reaching caravan cost, measured in one run against one daemon: a
//! plugin call (Get) over the unix socket, over TCP with mutual TLS on a kept-alive
//! connection, and over TLS with a new connection (and handshake) per call; and the first
//! call on a socket-activated daemon (the daemon's start included) against a call to a
//! running one.
//!
//! `cargo bench --bench transports` (as root). Under `cargo test` it runs a smoke version.
//! `CARAVAN_BENCH_OPS`: calls per transport (default 2000; smoke: 20).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../util/mod.rs"]
mod util;
use util::{env_num, Daemon, Scratch};

const GET: &str = r#"{"Name":"bench"}"#;

/// One request on a kept-alive connection; reads the answer by its Content-Length.
fn call<S: Read + Write>(stream: &mut BufReader<S>, body: &str) {
    write!(
        stream.get_mut(),
        "POST /VolumeDriver.Get HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut answer = vec![0u8; len];
    stream.read_exact(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains(r#""Volume":"#) && text.contains(r#""Err":"""#),
        "{text}"
    );
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn tls_client(dir: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(dir.join("docker.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("docker.key")).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
) -> BufReader<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    BufReader::new(rustls::StreamOwned::new(conn, tcp))
}

fn row(what: &str, times: Vec<Duration>, base: Option<Duration>) -> Duration {
    let n = times.len();
    let (p50, p99) = percentiles(times);
    let ratio = base.map_or("1.00 (baseline)".to_string(), |b| {
        format!("{:.2}", p50.as_secs_f64() / b.as_secs_f64())
    });
    println!(
        "{what:<44} {n:>6} calls  p50 {:>8.1} µs  p99 {:>8.1} µs  p50 / unix {ratio}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    p50
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !util::require_root("transports benchmark") {
        return;
    }
    let ops = env_num("CARAVAN_BENCH_OPS", if full { 2000 } else { 20 });
    let s = Scratch::new();
    util::pki::Pki::new(s.path());
    let port = util::free_port();
    let p = |f: &str| s.path().join(f).display().to_string();
    let listen = format!("tcp://127.0.0.1:{port}");
    let flags = [
        "--listen",
        &listen,
        "--tls-cert",
        &p("server.pem"),
        "--tls-key",
        &p("server.key"),
        "--tls-client-ca",
        &p("ca.pem"),
        "--log-level",
        "warn",
    ];
    let d = Daemon::start_with(
        s.path(),
        &s.path().join("root"),
        "a",
        s.path().join("spec"),
        "caravan",
        &flags,
    );
    d.ok("VolumeDriver.Create", r#"{"Name":"bench"}"#);
    println!("caravan transports: {ops} sequential Get calls each, one daemon (release build under cargo bench)");

    let mut unix = BufReader::new(std::os::unix::net::UnixStream::connect(&d.socket).unwrap());
    for _ in 0..ops / 10 + 1 {
        call(&mut unix, GET);
    }
    let times = (0..ops)
        .map(|_| {
            let t = Instant::now();
            call(&mut unix, GET);
            t.elapsed()
        })
        .collect();
    let base = row("unix socket, kept-alive connection", times, None);

    let config = tls_client(s.path());
    let mut tls = tls_connect(&config, port);
    for _ in 0..ops / 10 + 1 {
        call(&mut tls, GET);
    }
    let times = (0..ops)
        .map(|_| {
            let t = Instant::now();
            call(&mut tls, GET);
            t.elapsed()
        })
        .collect();
    row("TCP + mutual TLS, kept-alive connection", times, Some(base));

    let times = (0..ops.min(500))
        .map(|_| {
            let t = Instant::now();
            let mut c = tls_connect(&config, port);
            call(&mut c, GET);
            t.elapsed()
        })
        .collect();
    row(
        "TCP + mutual TLS, new connection per call",
        times,
        Some(base),
    );

    // Socket activation: the first call starts the daemon.
    let rounds = if full { 5 } else { 1 };
    let times = (0..rounds)
        .map(|i| {
            let dir = s.path().join(format!("activated-{i}"));
            std::fs::create_dir_all(dir.join("root")).unwrap();
            let sock = dir.join("caravan.sock");
            let q = |f: &str| dir.join(f).display().to_string();
            let mut child = Command::new("systemd-socket-activate")
                .arg("-l")
                .arg(&sock)
                .arg(util::caravan_bin())
                .args([
                    "daemon",
                    "--config",
                    "/dev/null",
                    "--node",
                    &format!("act{i}"),
                    "--root",
                    &q("root"),
                    "--state-dir",
                    &q("state"),
                    "--socket",
                    &q("caravan.sock"),
                    "--spec-dir",
                    &q("spec"),
                    "--log-level",
                    "warn",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("systemd-socket-activate");
            util::eventually(Duration::from_secs(10), "the activation socket", || {
                sock.exists()
            });
            let t = Instant::now();
            let (status, _) = util::http(&sock, "POST", "/Plugin.Activate", "", false);
            let first = t.elapsed();
            assert_eq!(status, 200);
            let _ = child.kill();
            let _ = child.wait();
            first
        })
        .collect();
    row(
        "socket activation: first call (start included)",
        times,
        Some(base),
    );
}
