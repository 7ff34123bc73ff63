//! Self-fencing: a holder of exclusive volumes that cannot renew its lease stops the
//! containers that write them, before any other node may judge it dead.
//!
//! The lease is this node's heartbeat: others take an exclusive volume over once its
//! holder has been silent for `--dead-after` on their own clocks, counted from when they
//! saw a beat, which is after the beat's write began. So the holder's lease runs out
//! `--dead-after` minus one heartbeat interval after the write of its last beat that
//! succeeded began: one interval before anyone may judge it dead, on this host's own
//! clock (`CLOCK_BOOTTIME`, which goes on while the host is suspended).
//!
//! The daemon writes the lease into its state folder (a local disk, never the export)
//! after every beat: until when it is valid, and the exclusive volumes bound here. A
//! small process of its own, the fence keeper (`caravan fence-keeper`, started by the
//! daemon, outliving it), reads that file several times a heartbeat and, once the lease
//! has run out, kills every process that reaches one of those volumes through a mount of
//! it other than the daemon's own mountpoint: the containers. It never touches the
//! export, so nothing it does can block on it; and it is not the daemon, so a daemon that
//! is killed or frozen (SIGSTOP), or stuck in a call to a dead export, is fenced all the
//! same. A daemon restarted within the lease (an upgrade) renews it and nothing is
//! stopped. What it reports (`fenced.json`) the daemon logs, counts and shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, IoContext, Result};

/// The lease file's format: a keeper refuses (and says so) a lease of a format it does not
/// know, and fences nothing on it.
const LEASE_FORMAT: u32 = 1;
/// How often the keeper looks at the lease.
const KEEPER_TICK: Duration = Duration::from_millis(100);
/// Bound on what the keeper reads from the state folder.
const MAX_FILE: u64 = 1 << 20;

/// The lease as written to `<state-dir>/lease.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LeaseFile {
    pub format: u32,
    /// Bumped at every write: a fence report names the lease it acted on.
    pub serial: u64,
    /// The daemon that writes it (the keeper stops once it is gone and nothing is held).
    pub daemon_pid: u32,
    /// `CLOCK_BOOTTIME` in nanoseconds past which the holder must have fenced itself.
    pub valid_until_ns: u64,
    /// Exclusive volumes bound on this node: name to this node's mountpoint.
    pub volumes: BTreeMap<String, PathBuf>,
}

/// What the keeper did when a lease ran out (`<state-dir>/fenced.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FenceReport {
    pub serial: u64,
    /// How late past the lease's end the processes were killed.
    pub late_ms: u64,
    pub volumes: Vec<String>,
    /// Processes killed, as `pid (command)`.
    pub killed: Vec<String>,
}

/// `CLOCK_BOOTTIME` now, in nanoseconds.
pub fn boottime_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    u64::try_from(ts.tv_sec())
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec()).unwrap_or(0))
}

/// The daemon's side: renews the lease after each beat and keeps its list of volumes.
pub struct Lease {
    path: PathBuf,
    report: PathBuf,
    /// How long a beat keeps the lease: `--dead-after` minus one interval.
    term: Duration,
    state: Mutex<LeaseFile>,
    /// The serial of the state last written to the file. Held while writing, so the file
    /// goes through the states in order, and one write carries every change made before
    /// it (Mounts at once share a write: see [`Lease::publish`]).
    file: Mutex<u64>,
    /// Fences the keeper reported, for `caravan info` and metrics.
    fences: Mutex<Fences>,
}

/// Fences of this node, as the daemon learned of them.
#[derive(Debug, Clone, Default)]
pub struct Fences {
    pub count: u64,
    pub last: Option<FenceReport>,
}

impl Lease {
    /// The lease in `state_dir`, valid for `term` after each beat began. A daemon started
    /// again (an upgrade) takes over the lease of the one before, with its end and its
    /// volumes: the containers on them keep running, and stay fenced if this daemon never
    /// gets to renew it.
    pub fn new(state_dir: &Path, term: Duration) -> Lease {
        let path = state_dir.join("lease.json");
        let before = read_bounded(&path)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<LeaseFile>(&b).ok())
            .filter(|l| l.format == LEASE_FORMAT)
            .unwrap_or_default();
        let state = LeaseFile {
            format: LEASE_FORMAT,
            daemon_pid: std::process::id(),
            ..before
        };
        let lease = Lease {
            path,
            report: state_dir.join("fenced.json"),
            term,
            state: Mutex::new(state),
            file: Mutex::new(0),
            fences: Mutex::new(Fences::default()),
        };
        lease.write_through(lease.changed());
        lease
    }

    pub fn term(&self) -> Duration {
        self.term
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LeaseFile> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A beat whose write began at `began` landed: the lease runs until `term` after it.
    pub fn renew(&self, began: Instant) {
        let began_ns = boottime_ns()
            .saturating_sub(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let mut s = self.state();
        let until = began_ns.saturating_add(u64::try_from(self.term.as_nanos()).unwrap_or(0));
        // Never shortened by a beat that began earlier and landed later.
        s.valid_until_ns = s.valid_until_ns.max(until);
        drop(s);
        self.write_through(self.changed());
    }

    /// Whether the lease is valid now (this node may let a container write).
    pub fn valid(&self) -> bool {
        boottime_ns() < self.state().valid_until_ns
    }

    /// Adds (or removes) an exclusive volume bound on this node, at `mountpoint`, in memory:
    /// [`Lease::publish`] tells the keeper.
    pub fn set_volume(&self, name: &str, mountpoint: Option<&Path>) {
        let mut s = self.state();
        let changed = match mountpoint {
            Some(mp) => {
                s.volumes
                    .insert(name.to_string(), mp.to_path_buf())
                    .as_deref()
                    != Some(mp)
            }
            None => s.volumes.remove(name).is_some(),
        };
        if changed {
            s.serial = s.serial.saturating_add(1);
        }
    }

    /// Returns once the lease file has every change made so far (the keeper then knows the
    /// volumes set). The write runs off the async threads; Mounts that publish at once
    /// share one write.
    pub async fn publish(self: &Arc<Self>) {
        let serial = self.state().serial;
        let lease = Arc::clone(self);
        let _ = crate::runtime::deadline::unbounded("writing the lease", move || {
            lease.write_through(serial)
        })
        .await;
    }

    /// The exclusive volumes the lease names.
    pub fn volumes(&self) -> Vec<String> {
        self.state().volumes.keys().cloned().collect()
    }

    /// Bumps the serial for a change made outside [`Lease::set_volume`]; returns it.
    fn changed(&self) -> u64 {
        let mut s = self.state();
        s.serial = s.serial.saturating_add(1);
        s.serial
    }

    /// Writes the current state unless a state at least as new as `serial` was written.
    fn write_through(&self, serial: u64) {
        let mut written = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if *written >= serial {
            return;
        }
        let now = self.state().clone();
        match write_atomically(&self.path, &now) {
            Ok(()) => *written = now.serial,
            Err(e) => {
                tracing::error!(lease = %self.path.display(), "writing the lease for the fence keeper: {e}")
            }
        }
    }

    /// Takes the keeper's report of a fence, if it wrote one: logs it, and remembers it for
    /// `caravan info` and metrics.
    pub fn take_report(&self) -> Option<FenceReport> {
        let text = read_bounded(&self.report).ok()??;
        let _ = std::fs::remove_file(&self.report);
        let report: FenceReport = serde_json::from_slice(&text).ok()?;
        tracing::warn!(
            volumes = %report.volumes.join(", "),
            killed = %report.killed.join(", "),
            late_ms = report.late_ms,
            "this node's lease ran out (it could not write its heartbeat for --dead-after minus one interval): the fence keeper stopped the containers that wrote its exclusive volumes, before any other node could take them over"
        );
        let mut f = self.fences.lock().unwrap_or_else(|p| p.into_inner());
        f.count = f.count.saturating_add(1);
        f.last = Some(report.clone());
        Some(report)
    }

    pub fn fences(&self) -> Fences {
        self.fences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Written through a temporary name and a rename (readers see all or nothing), without
/// an fsync: it is rewritten at every beat, and is worth nothing after a machine crash,
/// which its containers do not survive either.
fn write_atomically(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Store(format!("encoding: {e}")))?;
    crate::export::layout::replace_file(path, path, &bytes)
}

/// A small regular file of the state folder, `None` when it is not there.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let meta = f.metadata().ctx(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut out = Vec::new();
    f.take(MAX_FILE)
        .read_to_end(&mut out)
        .ctx(|| format!("reading {}", path.display()))?;
    Ok(Some(out))
}

/// Starts a fence keeper for `state_dir` unless one runs (it holds `fence-keeper.lock`).
pub fn ensure_keeper(state_dir: &Path) -> Result<()> {
    if keeper_running(state_dir)? {
        return Ok(());
    }
    let exe =
        std::env::current_exe().ctx(|| "finding this program to start the fence keeper".into())?;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("fence-keeper")
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // A process group of its own: a Ctrl-C or a signal to the daemon's group spares it.
        .process_group(0);
    let child = cmd
        .spawn()
        .ctx(|| "starting the fence keeper (caravan fence-keeper)".into())?;
    tracing::info!(pid = child.id(), "fence keeper started");
    // Not waited for: it outlives the daemon (it is reaped by init once it exits).
    std::mem::forget(child);
    Ok(())
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("fence-keeper.lock")
}

/// Whether a keeper holds the lock of `state_dir`.
pub fn keeper_running(state_dir: &Path) -> Result<bool> {
    let path = lock_path(state_dir);
    let f = open_lock(&path)?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(Error::io(format!("locking {}", path.display()), e.into())),
    }
}

fn open_lock(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))
}

/// `caravan fence-keeper`: keeps the lease of the daemon whose state folder is `state_dir`
/// until that daemon is gone and nothing is left to fence.
pub fn keep(state_dir: &Path) -> Result<()> {
    let path = lock_path(state_dir);
    let _lock = match nix::fcntl::Flock::lock(
        open_lock(&path)?,
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    ) {
        Ok(l) => l,
        // Another keeper serves this state folder.
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(()),
        Err((_, e)) => return Err(Error::io(format!("locking {}", path.display()), e.into())),
    };
    let lease_path = state_dir.join("lease.json");
    let report_path = state_dir.join("fenced.json");
    let mut fenced_serial = None;
    let mut reported = std::collections::BTreeSet::new();
    let mut refused_format = None;
    tracing::info!(state_dir = %state_dir.display(), "fence keeper: watching the lease");
    loop {
        std::thread::sleep(KEEPER_TICK);
        let lease = match read_bounded(&lease_path) {
            Ok(Some(bytes)) => match serde_json::from_slice::<LeaseFile>(&bytes) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::debug!("fence keeper: the lease cannot be read yet: {e}");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("fence keeper: {e}");
                None
            }
        };
        let Some(lease) = lease else {
            // No lease and no state folder: nothing to keep.
            if !state_dir.exists() {
                return Ok(());
            }
            continue;
        };
        if lease.format != LEASE_FORMAT {
            if refused_format != Some(lease.format) {
                tracing::error!(format = lease.format, "fence keeper: a lease of a format this version does not know ({LEASE_FORMAT} only): restart the daemon so that it starts a keeper of its own version");
                refused_format = Some(lease.format);
            }
            continue;
        }
        let daemon_alive = pid_alive(lease.daemon_pid);
        let now = boottime_ns();
        let expired = now >= lease.valid_until_ns && !lease.volumes.is_empty();
        let mut found_users = false;
        if expired {
            // At every tick while it is out, not once: a process forked while the others
            // were being killed, or a container restarted, is stopped at the next.
            let killed = stop_users(&lease.volumes);
            found_users = !killed.is_empty();
            // A killed process can stay a while, waiting in the kernel for a write its
            // export client holds: it is signalled again, and reported once.
            let new = killed.iter().any(|k| !reported.contains(k));
            reported.extend(killed.iter().cloned());
            if fenced_serial != Some(lease.serial) || new {
                let report = FenceReport {
                    serial: lease.serial,
                    late_ms: (now - lease.valid_until_ns) / 1_000_000,
                    volumes: lease.volumes.keys().cloned().collect(),
                    killed,
                };
                tracing::warn!(volumes = %report.volumes.join(", "), killed = %report.killed.join(", "), late_ms = report.late_ms, "fence keeper: the lease ran out; stopped the processes that use this node's exclusive volumes");
                if let Err(e) = write_atomically(&report_path, &report) {
                    tracing::error!("fence keeper: writing its report: {e}");
                }
                fenced_serial = Some(lease.serial);
            }
        }
        // Its daemon gone, the keeper stays while a container could still write under the
        // lease, and until a pass past its end found nobody left to stop.
        if !daemon_alive && (lease.volumes.is_empty() || (expired && !found_users)) {
            return Ok(());
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // A zombie (killed, not yet reaped) is gone for this purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
    }
}

/// Kills every process that reaches one of `volumes` through a mount of its folder other
/// than this node's own mountpoint (a container's bind mount, in a mount namespace of its
/// own). Returns them as `pid (command)`.
pub fn stop_users(volumes: &BTreeMap<String, PathBuf>) -> Vec<String> {
    let Ok(own) = crate::export::mounts::mount_table() else {
        return Vec::new();
    };
    // What each volume's own mountpoint shows: the filesystem and the folder of it.
    let wanted: Vec<(&str, &Path, &Path)> = volumes
        .values()
        .filter_map(|mp| own.iter().find(|m| &m.mount_point == mp))
        .map(|m| (m.device.as_str(), m.root.as_path(), m.mount_point.as_path()))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let users = processes_using(&wanted);
    let me = std::process::id();
    let mut killed = Vec::new();
    for pid in users.into_iter().filter(|p| *p != me) {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            killed.push(format!("{pid} ({})", comm.trim()));
        }
    }
    killed
}

/// The processes whose mount namespace has a mount of one of `wanted` (device, folder)
/// at another place than its mountpoint here (a copy propagated to another namespace
/// sits at the same place, and is not a user).
fn processes_using(wanted: &[(&str, &Path, &Path)]) -> Vec<u32> {
    let mut by_ns: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/mnt")) {
            by_ns.entry(meta.ino()).or_default().push(pid);
        }
    }
    let own_ns = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self/ns/mnt").map(|m| m.ino()).ok()
    };
    let mut out = Vec::new();
    for (ns, pids) in by_ns {
        if Some(ns) == own_ns {
            continue;
        }
        // One process's table is its namespace's.
        let Some(table) = pids
            .iter()
            .find_map(|p| crate::export::mounts::mount_table_of(*p).ok())
        else {
            continue;
        };
        let uses = table.iter().any(|m| {
            wanted.iter().any(|(dev, root, mp)| {
                m.device == *dev && m.root.starts_with(root) && m.mount_point != *mp
            })
        });
        if uses {
            out.extend(pids);
        }
    }
    out
}

/// How long after a holder stops writes it had in flight may still land on the export,
/// as far as the export's kind tells.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteBound {
    /// `None`: nothing bounds it (a hard NFS mount, an unknown network filesystem).
    pub wait: Option<Duration>,
    pub why: String,
}

/// How long a GlusterFS brick keeps the connection of a client that has gone silent: its
/// `server.tcp-user-timeout`, 42 s by default (measured on the test bed: dropped 42.2-42.4 s
/// after the client's link was cut, whatever the client's `network.ping-timeout`). Once it
/// is dropped nothing that client sent can land: a client fails, never replays, the calls
/// it had pending on a connection that drops. The client's own ping-timeout is no bound:
/// it runs only while the connection is silent both ways (measured about twice the
/// setting), and the host's other traffic postpones it (docs/semantics.md).
const GLUSTER_SERVER_DROP: Duration = Duration::from_secs(42);
/// Taken past the brick's drop, for a brick slow to act on it.
const GLUSTER_SLACK: Duration = Duration::from_secs(10);

/// The write bound of an export mounted as `fs_type` with mount `options` (`shared`:
/// a filesystem other hosts can mount).
pub fn write_bound(fs_type: &str, options: &str, shared: bool) -> WriteBound {
    if !shared {
        return WriteBound {
            wait: Some(Duration::ZERO),
            why: format!(
                "{fs_type} is a local filesystem: a write lands when it is made, or never"
            ),
        };
    }
    match fs_type {
        "fuse.glusterfs" | "glusterfs" => WriteBound {
            wait: Some(GLUSTER_SERVER_DROP + GLUSTER_SLACK),
            why: "GlusterFS: the brick drops a silent client after server.tcp-user-timeout (42s by default), and nothing that client sent lands after that; 10s taken past it (a volume that lowers server.tcp-user-timeout and server.keepalive-time: give --fence-wait as the larger + 10s)".into(),
        },
        "nfs" | "nfs4" => nfs_write_bound(options),
        other => WriteBound {
            wait: None,
            why: format!("{other}: caravan does not know how long this filesystem's client may keep a write in flight; give --fence-wait"),
        },
    }
}

/// A soft NFS mount gives up a request after `retrans` retransmissions, each waiting
/// `timeo` tenths of a second longer than the one before (over TCP, up to 600 s each); a
/// hard one retries for ever.
fn nfs_write_bound(options: &str) -> WriteBound {
    let opts: Vec<&str> = options.split(',').collect();
    let soft = opts.iter().any(|o| *o == "soft" || *o == "softerr");
    if !soft {
        return WriteBound {
            wait: None,
            why: "a hard NFS mount retries a write for ever: nothing bounds when it lands; mount the export soft (timeo, retrans) or give --fence-wait".into(),
        };
    }
    let num = |key: &str, default: u64| {
        opts.iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let timeo = num("timeo", 600).clamp(1, 6000);
    let retrans = num("retrans", 2).min(100);
    let total_ds: u64 = (1..=retrans + 1).map(|i| (i * timeo).min(6000)).sum();
    WriteBound {
        wait: Some(Duration::from_millis(total_ds * 100)),
        why: format!("a soft NFS mount gives a write up after timeo={timeo} retrans={retrans}"),
    }
}

/// What `caravan info` shows of the lease and its fencing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FencingReport {
    /// How long a beat keeps the lease (`--dead-after` less one heartbeat).
    pub lease_secs: f64,
    /// How long a takeover waits past `--dead-after`, and where that figure comes from.
    pub fence_wait_secs: f64,
    pub fence_wait_from: String,
    /// Whether a fence keeper serves this node's state folder.
    pub keeper_running: bool,
    /// Exclusive volumes bound here, under the lease.
    pub volumes: Vec<String>,
    pub fences: u64,
    pub last_fence: Option<FenceReport>,
}

/// The lines of `caravan info` about fencing.
pub fn fencing_text(f: &FencingReport) -> String {
    let mut text = format!(
        "Lease:        {:.1}s a beat; takeovers wait --dead-after + {:.0}s ({})\n",
        f.lease_secs, f.fence_wait_secs, f.fence_wait_from
    );
    if !f.keeper_running {
        text.push_str("Fencing:      NO FENCE KEEPER: containers of exclusive volumes would not be stopped if this node lost its lease; the daemon starts one every heartbeat\n");
    }
    if !f.volumes.is_empty() {
        text.push_str(&format!("Held here:    {}\n", f.volumes.join(", ")));
    }
    if let Some(last) = &f.last_fence {
        text.push_str(&format!(
            "Fenced:       {} time(s); last: {} stopped ({})\n",
            f.fences,
            last.volumes.join(", "),
            last.killed.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_bound_follows_the_exports_kind_and_options() {
        assert_eq!(write_bound("ext4", "rw", false).wait, Some(Duration::ZERO));
        assert_eq!(
            write_bound("fuse.glusterfs", "rw,user_id=0", true).wait,
            Some(Duration::from_secs(52))
        );
        // A hard NFS mount (the default) retries for ever: no bound, and the reason says
        // what to do.
        let hard = write_bound("nfs4", "rw,vers=4.2,hard,timeo=600,retrans=2", true);
        assert_eq!(hard.wait, None);
        assert!(
            hard.why.contains("--fence-wait") && hard.why.contains("soft"),
            "{}",
            hard.why
        );
        assert_eq!(write_bound("nfs4", "rw,vers=4.2", true).wait, None);
        // soft, timeo=100 (10 s), retrans=2: 10 + 20 + 30 s.
        assert_eq!(
            write_bound("nfs4", "rw,soft,timeo=100,retrans=2", true).wait,
            Some(Duration::from_secs(60))
        );
        // Each try is capped at 600 s; stored values out of range are clamped.
        assert_eq!(
            write_bound("nfs", "soft,timeo=99999999,retrans=1", true).wait,
            Some(Duration::from_secs(1200))
        );
        let unknown = write_bound("fuse.sshfs", "rw", true);
        assert!(unknown.wait.is_none() && unknown.why.contains("fuse.sshfs"));
    }

    #[test]
    fn a_restarted_daemon_takes_the_lease_over_and_a_beat_renews_it() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::new(dir.path(), Duration::from_secs(10));
        assert!(!lease.valid(), "no beat yet: no lease");
        lease.set_volume("db", Some(Path::new("/m/db")));
        lease.renew(Instant::now());
        assert!(lease.valid());
        let written: LeaseFile =
            serde_json::from_slice(&std::fs::read(dir.path().join("lease.json")).unwrap()).unwrap();
        assert_eq!(
            written.volumes.get("db").map(PathBuf::as_path),
            Some(Path::new("/m/db"))
        );
        let end = written.valid_until_ns;
        let ahead = end.saturating_sub(boottime_ns());
        assert!(ahead > 9_000_000_000 && ahead <= 10_000_000_000, "{ahead}");
        // A beat that began earlier but landed later never shortens it.
        lease.renew(Instant::now() - Duration::from_secs(5));
        assert_eq!(lease.state().valid_until_ns, end);
        // The next daemon (an upgrade) keeps the end and the volumes, with its own pid.
        drop(lease);
        let next = Lease::new(dir.path(), Duration::from_secs(10));
        assert!(next.valid());
        assert_eq!(next.volumes(), vec!["db".to_string()]);
        assert_eq!(next.state().valid_until_ns, end);
        next.set_volume("db", None);
        assert!(next.volumes().is_empty());
        // In the file only once published.
        let next = Arc::new(next);
        let on_file = || -> LeaseFile {
            serde_json::from_slice(&std::fs::read(dir.path().join("lease.json")).unwrap()).unwrap()
        };
        assert!(on_file().volumes.contains_key("db"));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(next.publish());
        assert!(on_file().volumes.is_empty());
        drop(next);
        // A lease of an unknown format is not taken over.
        std::fs::write(dir.path().join("lease.json"), br#"{"format":9,"serial":1,"daemon_pid":1,"valid_until_ns":99999999999999999,"volumes":{"x":"/x"}}"#).unwrap();
        assert!(Lease::new(dir.path(), Duration::from_secs(10))
            .volumes()
            .is_empty());
    }

    /// A process in a mount namespace of its own, like a container: with a bind mount of
    /// `source` at `inside` when given.
    fn namespaced_sleeper(source: &Path, inside: Option<&Path>) -> std::process::Child {
        let script = match inside {
            Some(at) => format!(
                "mount --make-rprivate / && mount --bind '{}' '{}' && exec sleep 600",
                source.display(),
                at.display()
            ),
            None => "exec sleep 600".to_string(),
        };
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .spawn()
            .unwrap()
    }

    fn wait_for_mount(pid: u32, at: &Path) {
        for _ in 0..100 {
            if crate::export::mounts::mount_table_of(pid)
                .is_ok_and(|t| t.iter().any(|m| m.mount_point == at))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the bind mount at {} never appeared in process {pid}",
            at.display()
        );
    }

    #[test]
    fn the_fence_kills_the_processes_that_reach_a_volume_through_a_mount_of_their_own() {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI must run the tests as root (fencing uses mount namespaces)");
            }
            eprintln!("SKIPPED: fencing needs root (mount namespaces, bind mounts)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (data, mp, inside) = (
            dir.path().join("data"),
            dir.path().join("mp"),
            dir.path().join("inside"),
        );
        for d in [&data, &mp, &inside] {
            std::fs::create_dir(d).unwrap();
        }
        // This node's mountpoint of the volume, as the daemon makes it.
        let status = std::process::Command::new("mount")
            .args(["--bind", data.to_str().unwrap(), mp.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unmount = Unmount(mp.clone());
        // A "container" with the volume bound inside, and one without it.
        let mut user = namespaced_sleeper(&mp, Some(&inside));
        let mut bystander = namespaced_sleeper(&mp, None);
        wait_for_mount(user.id(), &inside);
        let volumes = BTreeMap::from([("db".to_string(), mp.clone())]);
        let killed = stop_users(&volumes);
        assert_eq!(killed.len(), 1, "{killed:?}");
        assert!(
            killed[0].starts_with(&format!("{} ", user.id())),
            "{killed:?}"
        );
        let status = user.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(nix::libc::SIGKILL));
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a process without the volume is left alone"
        );
        // Nothing left to stop: a second pass kills nothing.
        assert!(stop_users(&volumes).is_empty());
        bystander.kill().unwrap();
        let _ = bystander.wait();
    }
}
