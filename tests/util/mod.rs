//! Helpers shared by the integration tests: start the real daemon on temporary folders,
//! speak its plugin API exactly as dockerd does, and clean up mounts afterwards.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod docker;
pub mod pki;
pub mod s3;
pub mod testbed;

/// True when running as root. Tests that need root (bind mounts, dockerd) call this and
/// return early when it is false; in CI (`CI=true`) a missing privilege is a failure.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if in_ci() {
        panic!("{test}: CI must run the tests as root (they bind-mount volumes)");
    }
    eprintln!("SKIPPED {test}: needs root to bind-mount volumes; run `sudo scripts/test`");
    false
}

/// A number from the environment, or `default` when unset or not a number (benchmarks'
/// knobs).
pub fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// The caravan binary under test: this build's, or `CARAVAN_TEST_BIN` (to run the same
/// tests against another build, e.g. the one before a fix).
pub fn caravan_bin() -> PathBuf {
    match std::env::var_os("CARAVAN_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => assert_cmd::cargo::cargo_bin("caravan"),
    }
}

/// A temporary folder under /tmp that unmounts anything mounted below it before deleting.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("caravan-test-")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_below(self.dir.path());
    }
}

/// Detaches every mount below `dir` (deepest first) so the folder can be deleted.
pub fn unmount_below(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = sys_mount::unmount(p, sys_mount::UnmountFlags::DETACH);
    }
}

/// A running `caravan daemon` with its own state folder, socket and spec folder.
pub struct Daemon {
    pub child: Option<Child>,
    pub node: String,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub spec_dir: PathBuf,
    pub driver: String,
    pub log: PathBuf,
    pub extra: Vec<String>,
    /// Started from a thread that lives as long as the test process, with
    /// PR_SET_PDEATHSIG, so that it stops when the test binary exits.
    pub tied_to_process: bool,
    /// The daemon's RLIMIT_NOFILE (soft and hard), as a host's limit would be; `None`
    /// inherits the test's.
    pub open_files: Option<u64>,
    /// Settings passed as `CARAVAN_*` environment variables (which an older build, run by
    /// `CARAVAN_TEST_BIN`, ignores where it does not know them, unlike flags).
    pub env: Vec<(String, String)>,
    /// Runs the daemon as on another machine: in a mount namespace of its own where this
    /// file is `/etc/machine-id`.
    pub machine_id: Option<PathBuf>,
}

impl Daemon {
    /// Starts a daemon for `node` on `root`, with node-local folders under `scratch`.
    pub fn start(scratch: &Path, root: &Path, node: &str) -> Daemon {
        Self::start_with(
            scratch,
            root,
            node,
            scratch.join(format!("spec-{node}")),
            "caravan",
            &[],
        )
    }

    pub fn start_with(
        scratch: &Path,
        root: &Path,
        node: &str,
        spec_dir: PathBuf,
        driver: &str,
        extra: &[&str],
    ) -> Daemon {
        let mut d = Self::new(scratch, root, node, spec_dir, driver, extra);
        d.spawn();
        d
    }

    /// The settings, without starting anything.
    pub fn new(
        scratch: &Path,
        root: &Path,
        node: &str,
        spec_dir: PathBuf,
        driver: &str,
        extra: &[&str],
    ) -> Daemon {
        std::fs::create_dir_all(root).unwrap();
        Daemon {
            child: None,
            node: node.to_string(),
            root: root.to_path_buf(),
            state: scratch.join(format!("state-{node}")),
            socket: scratch.join(format!("{node}.sock")),
            spec_dir,
            driver: driver.to_string(),
            log: scratch.join(format!("{node}.log")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tied_to_process: false,
            open_files: None,
            env: Vec::new(),
            machine_id: None,
        }
    }

    /// A daemon whose spec the machine's dockerd does not read leaves that dockerd alone
    /// (it would otherwise ask it for its volumes at start, see `caravan::host::dockerd`).
    fn docker_socket_flag(&self) -> &'static [&'static str] {
        let own_flag = self.extra.iter().any(|a| a == "--docker-socket");
        if own_flag || self.spec_dir == Path::new("/etc/docker/plugins") {
            &[]
        } else {
            &["--docker-socket", "none"]
        }
    }

    /// Starts the process again with the same settings (after a kill or a stop).
    pub fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// Starts the process again with the same settings where it must refuse to start:
    /// waits (at most 30 s) for it to exit, and returns its exit status and what it
    /// logged meanwhile.
    pub fn spawn_must_fail(&mut self) -> (ExitStatus, String) {
        let before = self.log_text().len();
        self.launch();
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon {} was still running 30 s after a start that must fail; log:\n{}",
                    self.node,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = self.log_text();
        (status, log.get(before..).unwrap_or_default().to_string())
    }

    /// Starts the process without waiting for it to serve.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.machine_id {
            None => Command::new(caravan_bin()),
            Some(id) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "mount --bind '{}' /etc/machine-id && exec \"$0\" \"$@\"",
                        id.display()
                    ))
                    .arg(caravan_bin());
                c
            }
        };
        cmd.arg("daemon")
            .arg("--root")
            .arg(&self.root)
            .arg("--node")
            .arg(&self.node)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--spec-dir")
            .arg(&self.spec_dir)
            .arg("--driver-name")
            .arg(&self.driver)
            .arg("--config")
            .arg("/dev/null")
            .args(self.docker_socket_flag())
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = if self.tied_to_process {
            spawn_tied(cmd)
        } else {
            cmd.spawn().expect("start caravan daemon")
        };
        if let (true, Some(dir)) = (self.tied_to_process, self.socket.parent()) {
            let _ = std::fs::write(dir.join("pid"), child.id().to_string());
        }
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        // Serving, and found by dockerd: the socket accepts a moment before the spec
        // file (`.spec`, or `.json` with TLS) is written.
        let spec = |ext: &str| self.spec_dir.join(format!("{}.{ext}", self.driver));
        while t.elapsed() < Duration::from_secs(20) {
            if UnixStream::connect(&self.socket).is_ok()
                && (spec("spec").exists() || spec("json").exists())
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon {} exited with {status} before serving; log:\n{}",
                    self.node,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "daemon {} did not serve within 20 s; log:\n{}",
            self.node,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                panic!("daemon {} did not stop within 30 s of SIGTERM", self.node);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plugin call exactly as dockerd sends it (POST, no Content-Type, body + newline).
    pub fn plugin(&self, method: &str, body: &str) -> Value {
        let (status, v) = http(&self.socket, "POST", &format!("/{method}"), body, false);
        assert_eq!(status, 200, "{method} {body}: HTTP {status} {v}");
        v
    }

    /// A plugin call that must succeed (empty Err).
    pub fn ok(&self, method: &str, body: &str) -> Value {
        let v = self.plugin(method, body);
        let err = v.get("Err").and_then(Value::as_str).unwrap_or("");
        assert!(err.is_empty(), "{method} {body} on {}: {err}", self.node);
        v
    }

    /// A plugin call that must fail; returns the error text.
    pub fn err(&self, method: &str, body: &str) -> String {
        let v = self.plugin(method, body);
        let err = v
            .get("Err")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        assert!(
            !err.is_empty(),
            "{method} {body} on {} should have failed: {v}",
            self.node
        );
        err
    }

    /// A control API call.
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        http(&self.socket, method, path, body, true)
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.state.join("mounts").join(name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        unmount_below(&self.state);
    }
}

/// Spawns `cmd` from a thread that never exits, with PR_SET_PDEATHSIG: the child gets
/// SIGTERM when that thread ends, which is when the test process exits.
fn spawn_tied(cmd: Command) -> Child {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                // SAFETY: prctl is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGTERM);
                        Ok(())
                    });
                }
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv().unwrap().expect("start caravan daemon")
}

/// One HTTP/1.1 request over a unix socket; returns the status and the JSON body.
pub fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    content_type: bool,
) -> (u16, Value) {
    try_http(socket, method, path, body, content_type)
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", socket.display()))
}

/// Like [`http`], but a failed connection or a cut answer is an error, not a panic.
pub fn try_http(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    content_type: bool,
) -> std::io::Result<(u16, Value)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    let payload = if body.is_empty() {
        String::new()
    } else {
        format!("{body}\n")
    };
    let ct = if content_type {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: \r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("no HTTP answer: {text:?}")))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("no status in {head:?}")))?;
    let v = serde_json::from_str(body)
        .map_err(|e| bad(format!("answer is not JSON ({e}): {body:?}")))?;
    Ok((status, v))
}

/// True if `path` is a mount point (per mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == path.to_str())
}

/// A 64-hex mount ID like dockerd's.
pub fn mount_id(n: u64) -> String {
    format!("{:064x}", n)
}

/// The record of a volume as the plugin's Get shows it.
pub fn status(d: &Daemon, name: &str) -> Value {
    d.ok("VolumeDriver.Get", &format!(r#"{{"Name":"{name}"}}"#))["Volume"]["Status"].clone()
}

/// Total mount count of `node` for a volume, from Get's Status.
pub fn node_count(d: &Daemon, name: &str, node: &str) -> u64 {
    status(d, name)["mounts"][node]["count"]
        .as_u64()
        .unwrap_or(0)
}

/// Polls `f` until it is true or `limit` passes.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `caravan daemon` on `root` as `node`, with folders of its own under `dir`, and
/// waits (at most 10 s) for it to exit, as a daemon that must refuse to start does;
/// returns its exit status and stderr. Panics, naming `why`, if it is still running then.
pub fn daemon_that_must_exit(
    dir: &Path,
    root: &Path,
    node: &str,
    why: &str,
) -> (std::process::ExitStatus, String) {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(caravan_bin())
        .args(["daemon", "--config", "/dev/null", "--node", node, "--root"])
        .arg(root)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("sock"))
        .arg("--spec-dir")
        .arg(dir.join("spec"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{why}: the daemon was still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No daemon logged another as judged dead (each logs every change of its verdicts).
pub fn assert_nobody_judged_dead(daemons: &[Daemon]) {
    for d in daemons {
        let log = d.log_text();
        let dead: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("node judged dead"))
            .collect();
        assert!(
            dead.is_empty(),
            "{} judged a node dead:\n{}",
            d.node,
            dead.join("\n")
        );
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The volumes tree of the metadata store under `root`, opened as another machine would
/// write it (no daemon may be running on the root).
pub fn volumes_tree(root: &Path) -> (sled::Db, sled::Tree) {
    let db = sled::Config::new()
        .path(root.join(".caravan/meta"))
        .segment_size(64 << 10)
        .open()
        .unwrap();
    let tree = db.open_tree("volumes").unwrap();
    (db, tree)
}

/// Every entry below `dir`, never following a link: its type, mode, owner, size, mtime
/// and content (a file's bytes, a link's target), and which entries are one file (a hard
/// link names the first of its paths in order). Eight threads at a time read folders and
/// files: on a network filesystem each entry is several round trips, and waiting on them
/// one by one made a listing of 10 000 files take over a minute.
pub fn tree_listing(dir: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    // (path, text without the hard-link part, inode of a regular file)
    type Seen = (PathBuf, String, Option<u64>);
    let one_folder = |rel: &Path| -> (Vec<Seen>, Vec<PathBuf>) {
        let (mut seen, mut folders) = (Vec::new(), Vec::new());
        for e in std::fs::read_dir(dir.join(rel)).unwrap() {
            let rel = rel.join(e.unwrap().file_name());
            let m = std::fs::symlink_metadata(dir.join(&rel)).unwrap();
            let ft = m.file_type();
            let (what, ino) = if ft.is_dir() {
                folders.push(rel.clone());
                (format!("dir mtime={}", m.mtime()), None)
            } else if ft.is_symlink() {
                let target = std::fs::read_link(dir.join(&rel)).unwrap();
                (format!("link -> {}", target.display()), None)
            } else if ft.is_file() {
                let hash = content_hash(&dir.join(&rel));
                let text = format!("file {} bytes, hash {hash:x}, mtime={}", m.len(), m.mtime());
                (text, Some(m.ino()))
            } else {
                ("other".to_string(), None)
            };
            let owner = format!(" mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid());
            seen.push((rel, what + &owner, ino));
        }
        (seen, folders)
    };
    let mut all: Vec<Seen> = Vec::new();
    let mut level = vec![PathBuf::new()];
    while !level.is_empty() {
        let per_thread = level.len().div_ceil(8);
        let results: Vec<(Vec<Seen>, Vec<PathBuf>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = level
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk.iter().map(|rel| one_folder(rel)).fold(
                            (Vec::new(), Vec::new()),
                            |(mut s, mut f), (s1, f1)| {
                                s.extend(s1);
                                f.extend(f1);
                                (s, f)
                            },
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        level = Vec::new();
        for (seen, folders) in results {
            all.extend(seen);
            level.extend(folders);
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first_names: std::collections::BTreeMap<u64, PathBuf> = Default::default();
    all.into_iter()
        .map(|(rel, text, ino)| match ino {
            Some(ino) => {
                let first = first_names
                    .entry(ino)
                    .or_insert_with(|| rel.clone())
                    .clone();
                let text = text.replacen(
                    " mode=",
                    &format!(", first name {} mode=", first.display()),
                    1,
                );
                (rel, text)
            }
            None => (rel, text),
        })
        .collect()
}

/// A hash of a file's content: of each 64 KiB block that is not all zeros, with its
/// offset (so two files with the same bytes hash the same whether their zeros are holes or
/// data). Only data regions are read (`SEEK_DATA`): a sparse file of a GiB costs its data.
pub fn content_hash(path: &Path) -> u64 {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 64 << 10;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut h = 0u64;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut off = 0u64;
    if len <= BLOCK {
        // One block: read as it is (a hole reads as zeros, which count for nothing), with
        // no seeks, each a round trip on a network filesystem.
        f.read_exact_at(&mut buf[..len as usize], 0).unwrap();
        if buf[..len as usize].iter().any(|b| *b != 0) {
            h = buf[..len as usize]
                .iter()
                .fold(0, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64));
        }
        return h;
    }
    while off < len {
        let data = match nix::unistd::lseek(f.as_fd(), off as i64, nix::unistd::Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => off,
        };
        // From the start of the block holding it, so blocks line up in both files.
        let mut at = data / BLOCK * BLOCK;
        let end = match nix::unistd::lseek(f.as_fd(), data as i64, nix::unistd::Whence::SeekHole) {
            Ok(e) => (e as u64).min(len),
            Err(_) => len,
        };
        while at < end {
            let n = ((len - at).min(BLOCK)) as usize;
            f.read_exact_at(&mut buf[..n], at).unwrap();
            if buf[..n].iter().any(|b| *b != 0) {
                h = h.wrapping_mul(1_000_003).wrapping_add(at);
                h = buf[..n]
                    .iter()
                    .fold(h, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64));
            }
            at += BLOCK;
        }
        off = at.max(end);
    }
    h
}

/// `caravan --socket SOCKET ARGS` (the CLI of this build), which must succeed; its trimmed
/// stdout.
pub fn cli_ok(socket: &Path, args: &[&str]) -> String {
    let out = Command::new(caravan_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "caravan {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fills `data` with what a volume may hold, for round trips: folders 40 levels deep,
/// `small` small files, a sparse file of `sparse` bytes with data at both ends, hard links,
/// symlinks pointing outside the volume, a FIFO, extended attributes, owners, modes and
/// odd names (a newline, spaces, a leading dash, bytes that are not UTF-8).
pub fn rich_tree(data: &Path, small: usize, sparse: u64) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let mut deep = data.to_path_buf();
    for i in 0..40 {
        deep.push(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom"), "at the bottom").unwrap();
    // Eight writers at once: on a network filesystem each file is a few round trips, and the
    // time goes to waiting, not to the CPU.
    let folders = (small / 500).max(1);
    std::thread::scope(|scope| {
        for w in 0..8 {
            scope.spawn(move || {
                for d in (0..folders).filter(|d| d % 8 == w) {
                    let dir = data.join(format!("many/{d:03}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    for i in 0..small.min(500) {
                        let text = format!("small file {d}/{i}\n");
                        std::fs::write(dir.join(format!("f{i:04}")), text).unwrap();
                    }
                }
            });
        }
    });
    std::fs::write(data.join("name with spaces\nand a newline"), "odd").unwrap();
    std::fs::write(data.join("-leading-dash"), "dash").unwrap();
    std::fs::write(
        data.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        "not utf-8",
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", data.join("outside")).unwrap();
    std::os::unix::fs::symlink("../../../../..", data.join("up-and-out")).unwrap();
    std::fs::write(data.join("one"), "linked").unwrap();
    std::fs::hard_link(data.join("one"), data.join("many/also-one")).unwrap();
    std::fs::hard_link(data.join("one"), deep.join("deep-one")).unwrap();
    nix::unistd::mkfifo(
        &data.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    let f = std::fs::File::create(data.join("sparse")).unwrap();
    f.set_len(sparse).unwrap();
    f.write_all_at(b"the head of a sparse file", 0).unwrap();
    f.write_all_at(&[0x5a; 100_000], sparse - 100_000).unwrap();
    std::fs::write(data.join("owned"), "by 1234").unwrap();
    std::os::unix::fs::chown(data.join("owned"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(data.join("owned"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    set_xattr(&data.join("owned"), "user.caravan.note", b"kept by backups");
    set_xattr(&data.join("many"), "user.caravan.dir", b"\x00\x01binary");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        nix::libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// The value of one extended attribute (`None` if it is not set).
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: as above.
    let len =
        unsafe { nix::libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// Checks that `copy` holds what `original` holds (as `tree_listing` sees it), with the
/// extended attributes `rich_tree` set, the sparse file still sparse, and the hard links
/// still one file.
/// `copy` holds what [`rich_tree`] wrote, entry by entry as `expected` (the original's
/// [`tree_listing`], taken once by the caller: on a network filesystem a listing of 10 000
/// files is minutes).
pub fn assert_same_rich_tree(expected: &std::collections::BTreeMap<PathBuf, String>, copy: &Path) {
    assert_same_listing(expected, &tree_listing(copy));
    assert_rich_tree_details(copy);
}

/// Two [`tree_listing`]s are the same, and the first difference is named.
pub fn assert_same_listing(
    a: &std::collections::BTreeMap<PathBuf, String>,
    b: &std::collections::BTreeMap<PathBuf, String>,
) {
    for (path, what) in a {
        assert_eq!(b.get(path), Some(what), "{} differs", path.display());
    }
    assert_eq!(a.len(), b.len(), "entries: {} vs {}", a.len(), b.len());
}

/// What a listing does not show of [`rich_tree`]'s copy: xattrs, holes, link counts, a
/// symlink kept as a link.
pub fn assert_rich_tree_details(copy: &Path) {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        xattr(&copy.join("owned"), "user.caravan.note").as_deref(),
        Some(&b"kept by backups"[..])
    );
    assert_eq!(
        xattr(&copy.join("many"), "user.caravan.dir").as_deref(),
        Some(&b"\x00\x01binary"[..])
    );
    let sparse = std::fs::metadata(copy.join("sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 8 << 20,
        "the sparse file stays sparse: {} blocks",
        sparse.blocks()
    );
    assert_eq!(
        std::fs::metadata(copy.join("one")).unwrap().nlink(),
        3,
        "hard links stay links"
    );
    assert_eq!(
        std::fs::read_link(copy.join("outside")).unwrap(),
        Path::new("/etc/shadow")
    );
}

/// A "container": a process in a mount namespace of its own with `mountpoint` bound at
/// `inside`, appending "`tag` N" lines to `inside/log` every `every_ms` (with `sync` of
/// the file after each line when `sync`). Killed when dropped, however the test ends.
pub fn line_writer(
    mountpoint: &Path,
    inside: &Path,
    tag: &str,
    every_ms: u32,
    sync: bool,
) -> LineWriter {
    std::fs::create_dir_all(inside).unwrap();
    let sync = if sync {
        format!("sync '{}/log'; ", inside.display())
    } else {
        String::new()
    };
    let script = format!(
        "mount --make-rprivate / && mount --bind '{mp}' '{at}' && i=0; while :; do echo \"{tag} $i\" >> '{at}/log'; {sync}i=$((i+1)); sleep {secs}; done",
        mp = mountpoint.display(),
        at = inside.display(),
        secs = f64::from(every_ms) / 1000.0,
    );
    LineWriter(
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// See [`line_writer`].
pub struct LineWriter(pub Child);

impl Drop for LineWriter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
