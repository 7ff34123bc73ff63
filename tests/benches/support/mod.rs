//! What the benchmarks share: a daemon started for one run, a connection that speaks the
//! plugin protocol as dockerd does, clients run at once, and a row of latency figures.

#![allow(dead_code)] // each bench target uses its own part of this

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Runs `per_client` calls on each of `clients` connections at once; returns every latency.
pub fn parallel(
    sockets: &[PathBuf],
    clients: usize,
    per_client: usize,
    f: &(dyn Fn(usize, usize, &mut Conn) -> Duration + Sync),
) -> Vec<Duration> {
    // `clients` per socket; client c talks to socket c / clients, so c is unique overall.
    let total = clients * sockets.len();
    let barrier = Arc::new(Barrier::new(total));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..total)
            .map(|c| {
                let barrier = barrier.clone();
                let socket = &sockets[c / clients];
                s.spawn(move || {
                    let mut conn = Conn::open(socket);
                    barrier.wait();
                    (0..per_client)
                        .map(|i| f(c, i, &mut conn))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

pub struct Row {
    pub op: &'static str,
    pub clients: String,
    pub volumes: String,
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub ops_per_sec: f64,
}

impl Row {
    pub fn new(
        op: &'static str,
        clients: &str,
        volumes: &str,
        mut samples: Vec<Duration>,
        wall: Duration,
    ) -> Row {
        samples.sort();
        let ms =
            |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        let ops_per_sec = if wall.is_zero() {
            1.0 / samples.iter().map(Duration::as_secs_f64).sum::<f64>() * samples.len() as f64
        } else {
            samples.len() as f64 / wall.as_secs_f64()
        };
        Row {
            op,
            clients: clients.to_string(),
            volumes: volumes.to_string(),
            n: samples.len(),
            p50: ms(0.5),
            p99: ms(0.99),
            ops_per_sec,
        }
    }
}

/// A keep-alive connection speaking the plugin protocol as dockerd does.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    pub fn open(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// One call; panics on a transport error or an `Err` answer. Returns the latency.
    pub fn call(&mut self, method: &str, body: &str) -> Duration {
        let (elapsed, answer) = self.try_call(method, body);
        if let Err(err) = answer {
            panic!("{method} {body}: {err}");
        }
        elapsed
    }

    /// One call; panics on a transport error only. Returns the latency, and the answer or
    /// its `Err` text.
    pub fn try_call(
        &mut self,
        method: &str,
        body: &str,
    ) -> (Duration, Result<serde_json::Value, String>) {
        let t = Instant::now();
        let payload = format!("{body}\n");
        write!(
            self.writer,
            "POST /VolumeDriver.{method} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .unwrap();
        let mut len = 0;
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf).unwrap();
        let elapsed = t.elapsed();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        match v.get("Err").and_then(|e| e.as_str()).unwrap_or("") {
            "" => (elapsed, Ok(v)),
            err => (elapsed, Err(err.to_string())),
        }
    }
}

pub struct BenchDaemon {
    pub child: Child,
    pub socket: PathBuf,
    pub state: PathBuf,
}

impl BenchDaemon {
    pub fn start(scratch: &Path, root: &Path, node: &str) -> BenchDaemon {
        Self::start_of(&crate::util::caravan_bin(), scratch, root, node)
    }

    /// A daemon of the binary `bin` (another build, for a baseline in the same run).
    pub fn start_of(bin: &Path, scratch: &Path, root: &Path, node: &str) -> BenchDaemon {
        let socket = scratch.join(format!("{node}.sock"));
        let state = scratch.join(format!("state-{node}"));
        let child = Command::new(bin)
            .args([
                "daemon",
                "--node",
                node,
                "--config",
                "/dev/null",
                "--log-level",
            ])
            .arg(std::env::var("CARAVAN_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .arg("--root")
            .arg(root)
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .arg("--spec-dir")
            .arg(scratch.join(format!("spec-{node}")))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        BenchDaemon {
            child,
            socket,
            state,
        }
    }

    pub fn rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for p in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(p).starts_with(&self.state) {
                let _ = sys_mount::unmount(p, sys_mount::UnmountFlags::DETACH);
            }
        }
    }
}
