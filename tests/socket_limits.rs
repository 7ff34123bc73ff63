//! The socket is hostile input too: anything on the host can connect to it. These tests
//! open connections that never finish a request, send bodies too large to serve, and
//! flood one daemon while two others watch its heartbeat (issue 12, defect 7).

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use util::{require_root, Daemon, Scratch};

/// A request cut off in the middle of its headers, as a slow or hostile client sends.
const HALF_HEAD: &[u8] = b"POST /VolumeDriver.Get HTTP/1.1\r\nHost: plugin\r\nContent-Le";

/// Reads until the daemon closes the connection; returns how long that took.
fn time_to_close(mut s: UnixStream, limit: Duration) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t.elapsed(),
            Err(e) => panic!("the daemon kept a half-sent request open past {limit:?}: {e}"),
        }
    }
}

fn peak_memory_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_half_sent_request_is_closed_after_the_header_timeout() {
    if !require_root("a_half_sent_request_is_closed_after_the_header_timeout") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut d = Daemon::new(s.path(), &root, "a", s.path().join("spec"), "caravan", &[]);
    d.env.push(("CARAVAN_HEADER_TIMEOUT".into(), "2s".into()));
    d.spawn();
    let mut c = UnixStream::connect(&d.socket).unwrap();
    c.write_all(HALF_HEAD).unwrap();
    let took = time_to_close(c, Duration::from_secs(10));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?}, expected about 2 s"
    );
    // A connection that sends nothing is an idle one: closed the same way.
    let idle = UnixStream::connect(&d.socket).unwrap();
    let took = time_to_close(idle, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "idle connection closed after {took:?}"
    );
    // The daemon still serves.
    d.plugin("Plugin.Activate", "");
}

#[test]
fn a_body_over_one_mib_is_refused_before_it_is_read() {
    if !require_root("a_body_over_one_mib_is_refused_before_it_is_read") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let d = Daemon::start(s.path(), &root, "a");
    // Declared too large: refused without reading a byte of it.
    let mut c = UnixStream::connect(&d.socket).unwrap();
    write!(
        c,
        "POST /VolumeDriver.Create HTTP/1.1\r\nHost: \r\nContent-Length: 209715200\r\n\r\n{{\"Name\":\"vv\""
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = c.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("request body over 1048576 bytes"), "{text}");
    // Chunked, with no length given: cut off at the limit.
    let mut c = UnixStream::connect(&d.socket).unwrap();
    c.write_all(
        b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let chunk = vec![b' '; 64 << 10];
    for _ in 0..17 {
        if write!(c, "{:x}\r\n", chunk.len()).is_err() || c.write_all(&chunk).is_err() {
            break;
        }
        let _ = c.write_all(b"\r\n");
    }
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        peak_memory_kib(d.pid()) < 64 << 10,
        "peak memory {} KiB",
        peak_memory_kib(d.pid())
    );
    let (_, v) = util::http(
        &d.socket,
        "POST",
        "/VolumeDriver.Get",
        r#"{"Name":"vv"}"#,
        false,
    );
    assert!(v["Err"].as_str().unwrap().contains("no such volume"), "{v}");
}

#[test]
fn shutdown_does_not_wait_for_a_half_sent_request() {
    if !require_root("shutdown_does_not_wait_for_a_half_sent_request") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut d = Daemon::start(s.path(), &root, "a");
    let mut c = UnixStream::connect(&d.socket).unwrap();
    c.write_all(HALF_HEAD).unwrap();
    let t = Instant::now();
    assert!(d.stop().success());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        t.elapsed()
    );
    assert!(
        !d.log_text().contains("ERROR"),
        "a client's half-sent request was logged as an error:\n{}",
        d.log_text()
    );
}

/// 20 000 connections that never finish a request, while two other daemons watch this
/// node: it is never judged dead, serves an Activate within 1 s once the flood stops, and
/// its memory stays bounded. The flooded daemon may open 16 384 files (a host's limit,
/// fewer than the flood), so a daemon without a connection limit runs out of descriptors
/// and its heartbeat with them.
#[test]
fn a_connection_flood_never_gets_a_live_node_judged_dead() {
    if !require_root("a_connection_flood_never_gets_a_live_node_judged_dead") {
        return;
    }
    const FLOOD: usize = 20_000;
    let s = Scratch::new();
    let root = s.path().join("root");
    let fast = ["--dead-after", "4s", "--heartbeat", "1s"];
    let mut a = Daemon::new(
        s.path(),
        &root,
        "a",
        s.path().join("spec-a"),
        "caravan",
        &fast,
    );
    a.env.push(("CARAVAN_HEADER_TIMEOUT".into(), "1s".into()));
    a.open_files = Some(16_384);
    a.spawn();
    let watchers: Vec<Daemon> = ["b", "c"]
        .iter()
        .map(|n| {
            Daemon::start_with(
                s.path(),
                &root,
                n,
                s.path().join(format!("spec-{n}")),
                "caravan",
                &fast,
            )
        })
        .collect();
    util::eventually(Duration::from_secs(10), "b and c see a alive", || {
        watchers.iter().all(|w| {
            let (_, nodes) = w.api("GET", "/v1/nodes", "");
            nodes
                .as_array()
                .is_some_and(|l| l.iter().any(|n| n["node"] == "a" && n["state"] == "alive"))
        })
    });

    // The flood: FLOOD connections, each with half a request head, all kept open, from
    // four processes (a process of this test may open fewer than FLOOD files). A connect
    // waits while the daemon's backlog is full. It lasts at least 8 s (twice --dead-after).
    let started = Instant::now();
    let mut floods: Vec<Flooder> = (0..4)
        .map(|_| Flooder::start(&a.socket, FLOOD / 4))
        .collect();
    for f in &mut floods {
        f.wait_connected(Duration::from_secs(120));
    }
    let connected = started.elapsed();
    if let Some(rest) = Duration::from_secs(8).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let peak_kib = peak_memory_kib(a.pid());
    drop(floods);
    let stopped = Instant::now();
    let (status, v) = util::http(&a.socket, "POST", "/Plugin.Activate", "", false);
    let answered = stopped.elapsed();
    eprintln!(
        "flood: {FLOOD} connections opened in {connected:.1?}, held {:.1?}; peak memory of the flooded daemon {} MiB; Activate answered {answered:.0?} after the flood stopped",
        stopped - started,
        peak_kib / 1024
    );
    util::assert_nobody_judged_dead(&watchers);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Implements"][0], "VolumeDriver");
    assert!(
        answered < Duration::from_secs(1),
        "Activate took {answered:?} after the flood"
    );
    assert!(
        peak_kib < 256 << 10,
        "peak memory {peak_kib} KiB during the flood"
    );
    let alog = a.log_text();
    assert!(
        !alog.lines().any(|l| l.contains("heartbeat:")),
        "the flooded daemon's heartbeat failed:\n{alog}"
    );
    assert!(
        alog.contains("connection limit reached"),
        "no log line about the limit:\n{alog}"
    );
}

/// A process of this test binary running [`flood_helper`]: it opens `count` connections
/// with half a request head each, says so on stdout, and holds them until it is killed.
struct Flooder(
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
);

impl Flooder {
    fn start(socket: &std::path::Path, count: usize) -> Flooder {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "flood_helper",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("CARAVAN_FLOOD_SOCKET", socket)
            .env("CARAVAN_FLOOD_COUNT", count.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Flooder(child, out)
    }

    fn wait_connected(&mut self, limit: Duration) {
        use std::io::BufRead;
        let t = Instant::now();
        let mut line = String::new();
        while !line.contains("flood connected") {
            line.clear();
            let n = self.1.read_line(&mut line).unwrap();
            assert!(
                n > 0 && t.elapsed() < limit,
                "a flooder ended without connecting"
            );
        }
    }
}

impl Drop for Flooder {
    /// SIGKILL: the kernel closes all its connections at once, as a flood that stops.
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test: the flooding process of [`a_connection_flood_never_gets_a_live_node_judged_dead`].
#[test]
#[ignore = "run by the flood test as a helper process"]
fn flood_helper() {
    let (Some(socket), Some(count)) = (
        std::env::var_os("CARAVAN_FLOOD_SOCKET"),
        std::env::var("CARAVAN_FLOOD_COUNT")
            .ok()
            .and_then(|c| c.parse::<usize>().ok()),
    ) else {
        return;
    };
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        match UnixStream::connect(&socket) {
            Ok(mut c) => {
                let _ = c.write_all(HALF_HEAD);
                held.push(c);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    println!("flood connected {count}");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
