//! Helpers for tests against a real dockerd (started by `scripts/docker-up`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use serde_json::Value;

use super::{in_ci, Daemon, Scratch};

pub const IMAGE: &str = "caravan-test/busybox:latest";

/// Debian's docker CLI (matching Debian's dockerd) when present.
pub fn cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// True when root and a dockerd with the test image answer. Otherwise the test is skipped
/// with a reason, except in CI, where it fails.
pub fn available(test: &str) -> bool {
    if !super::require_root(test) {
        return false;
    }
    let ok = Command::new(cli())
        .args(["image", "inspect", IMAGE])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return true;
    }
    if in_ci() {
        panic!("{test}: no dockerd with {IMAGE}; .ci/run must run scripts/docker-up first");
    }
    eprintln!("SKIPPED {test}: no dockerd with {IMAGE}; run `sudo scripts/docker-up` first");
    false
}

/// Runs `docker ARGS`; returns the output whatever the exit status.
pub fn docker(args: &[&str]) -> Output {
    Command::new(cli()).args(args).output().expect("run docker")
}

/// Runs `docker ARGS`, which must succeed; returns stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker ARGS`, which must fail; returns stderr.
pub fn docker_err(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        !out.status.success(),
        "docker {} should have failed",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The driver name every end-to-end test registers with the machine's dockerd.
///
/// dockerd never forgets a plugin it activated; if every test used a driver of its own,
/// each finished test would leave a dead plugin behind, and every later `docker volume
/// ls` (which asks every plugin) would wait 15 s per dead one. So all end-to-end tests
/// share one driver name and one socket path, served by one daemon per test binary.
pub const DRIVER: &str = "caravan-e2e";
/// Fixed for good: dockerd remembers the socket of a plugin it activated, for its lifetime.
pub const SOCKET: &str = "/run/caravan-test/e2e/caravan.sock";
pub const BASE: &str = "/var/lib/caravan-test/e2e";

/// The shared daemon. Tests take it shared; tests that restart it take it exclusively.
pub fn shared_daemon() -> &'static RwLock<Daemon> {
    static DAEMON: OnceLock<RwLock<Daemon>> = OnceLock::new();
    DAEMON.get_or_init(|| RwLock::new(start_shared_driver(None)))
}

/// Starts the daemon that serves [`DRIVER`] at its fixed socket, on `root` (default: a
/// fresh folder under the e2e base). Benchmarks use it to measure another root through
/// the same driver name, which leaves dockerd no dead plugin behind.
pub fn start_shared_driver(root: Option<&Path>) -> Daemon {
    let base = Path::new(BASE);
    let socket = PathBuf::from(SOCKET);
    let run_dir = socket.parent().unwrap();
    // A daemon left by an earlier binary (normally already gone: see spawn_tied).
    if let Ok(pid) = std::fs::read_to_string(run_dir.join("pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.contains("caravan") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    super::unmount_below(base);
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base).unwrap();
    std::fs::create_dir_all(run_dir).unwrap();
    let default_root = base.join("root");
    let mut d = Daemon::new(
        base,
        root.unwrap_or(&default_root),
        "h1",
        PathBuf::from("/etc/docker/plugins"),
        DRIVER,
        &[],
    );
    d.socket = socket;
    d.tied_to_process = true;
    d.spawn();
    d
}

/// One test's view of the shared world: names for volumes and containers that no other
/// test uses. Dropping it removes the containers and volumes it made.
pub struct Env {
    pub prefix: String,
    pub driver: String,
    pub scratch: Scratch,
    containers: std::cell::RefCell<Vec<String>>,
    volumes: std::cell::RefCell<Vec<String>>,
}

impl Env {
    pub fn new(test: &str) -> Env {
        shared_daemon();
        Env {
            prefix: short(test),
            driver: DRIVER.to_string(),
            scratch: Scratch::new(),
            containers: Default::default(),
            volumes: Default::default(),
        }
    }

    pub fn daemon(&self) -> RwLockReadGuard<'static, Daemon> {
        shared_daemon().read().unwrap_or_else(|p| p.into_inner())
    }

    /// A volume name unique to this test (registered for cleanup).
    pub fn volume(&self, name: &str) -> String {
        let v = format!("{}-{name}", self.prefix);
        self.volumes.borrow_mut().push(v.clone());
        v
    }

    /// A container name unique to this test (registered for cleanup).
    pub fn container(&self, name: &str) -> String {
        let c = format!("{}-{name}", self.prefix);
        self.containers.borrow_mut().push(c.clone());
        c
    }

    /// `docker run -d` a container that sleeps with `vol` at /data; returns its name.
    pub fn run_sleeper(&self, name: &str, vol: &str, extra: &[&str]) -> String {
        let c = self.container(name);
        let _ = docker(&["rm", "-f", &c]);
        let mount = format!("{vol}:/data");
        let mut args = vec!["run", "-d", "--network", "none", "--name", &c, "-v", &mount];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "3600"]);
        docker_ok(&args);
        c
    }

    /// The volume's data folder on the shared root.
    pub fn data(&self, vol: &str) -> PathBuf {
        self.daemon().root.join("volumes").join(vol).join("data")
    }

    pub fn mountpoint(&self, vol: &str) -> PathBuf {
        self.daemon().mountpoint(vol)
    }

    /// This node's mount count of a volume, from the daemon.
    pub fn count(&self, vol: &str) -> u64 {
        super::node_count(&self.daemon(), vol, "h1")
    }

    pub fn inspect(&self, vol: &str) -> Value {
        let out = docker_ok(&["volume", "inspect", vol]);
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in self.containers.borrow().iter() {
            let _ = docker(&["rm", "-f", c]);
        }
        // Only volumes dockerd still knows: asking about an unknown name makes dockerd
        // probe every plugin it has ever activated.
        let known = String::from_utf8_lossy(&docker(&["volume", "ls", "-q"]).stdout).to_string();
        for v in self.volumes.borrow().iter() {
            if known.lines().any(|l| l == v) {
                let _ = docker(&["volume", "rm", "-f", v]);
            }
        }
    }
}

fn short(test: &str) -> String {
    test.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect()
}

/// Restarts the dockerd that answers on the default socket, with the same command line.
pub fn restart_dockerd() {
    let pid: i32 = std::fs::read_to_string("/var/run/docker.pid")
        .expect("dockerd's pidfile /var/run/docker.pid (started by scripts/docker-up)")
        .trim()
        .parse()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = std::time::Instant::now();
    while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "dockerd did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/log/caravan-dockerd.log")
        .unwrap();
    // dockerd outlives this test (setsid); nobody here waits for it.
    #[allow(clippy::zombie_processes)]
    std::process::Command::new("setsid")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start dockerd again");
    super::eventually(Duration::from_secs(60), "dockerd to answer again", || {
        std::process::Command::new(cli())
            .arg("info")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
}

/// `docker run --rm --network none -v MOUNT IMAGE ARGS...`, which must succeed; returns its
/// stdout, trimmed. (No network: the test machine's dockerd has no bridge.)
pub fn run_rm(mount: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", "--network", "none", "-v", mount, IMAGE];
    all.extend_from_slice(args);
    docker_ok(&all)
}
