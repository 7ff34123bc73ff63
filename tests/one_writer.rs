//! One writer, whatever fails (issue 29; docs/semantics.md, "One writer, whatever fails").
//!
//! On the multi-host test bed (GlusterFS shared by three simulated hosts), a "container"
//! on a holder host (a process in a mount namespace of its own, the volume bound inside)
//! appends numbered lines, with `sync`, to a log on an exclusive volume. Then the holder's
//! network link is cut, its export client frozen (SIGSTOP), or its caravan daemon killed
//! or frozen; host 2 asks for the volume (as dockerd would for a task Swarm restarts
//! there) until it gets it, and appends lines of its own. The fault ends before the
//! takeover, just after it, or long after it (30 s). Whatever the case, no line of the old
//! writer may follow the new writer's first, in each log as read right after its round and
//! again at the end of the test, minutes later (a write held somewhere would land by then).
//!
//! The settings: --dead-after 5 s, --heartbeat 1 s (a lease of 4 s), the GlusterFS volume's
//! timeouts at 10 s (`scripts/testbed timeouts`: network.ping-timeout,
//! server.tcp-user-timeout and server.keepalive-time; every client mounted again after they
//! are set, as a client keeps the values it mounted with), and --fence-wait 20 s, 10 s
//! more, as docs/semantics.md says to give it. A takeover comes at the earliest 25 s after
//! the holder's last beat.

mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::testbed::{ok, three_hosts};
use util::Daemon;

/// The GlusterFS volume's timeouts for the run: 10 s, or `CARAVAN_ONE_WRITER_TIMEOUTS`; 42
/// leaves GlusterFS's defaults (ping-timeout and tcp-user-timeout 42 s, keepalive 20 s) and
/// measures the failover of an untuned export (docs/benchmarks.md).
fn gluster_timeouts() -> u64 {
    util::env_num("CARAVAN_ONE_WRITER_TIMEOUTS", 10) as u64
}

fn untuned() -> bool {
    gluster_timeouts() == 42
}

/// The fence wait: the timeouts + 10 s, given as docs/semantics.md says for a volume that
/// lowers them; with GlusterFS's defaults the daemon derives it (52 s).
fn fence_wait() -> u64 {
    gluster_timeouts() + 10
}

fn flags() -> Vec<String> {
    let mut flags: Vec<String> = ["--dead-after", "5s", "--heartbeat", "1s", "--timeout", "8s"]
        .map(String::from)
        .to_vec();
    if !untuned() {
        flags.extend(["--fence-wait".to_string(), format!("{}s", fence_wait())]);
    }
    flags
}

/// --dead-after + the fence wait, less one heartbeat (the last beat host 2 saw may be up
/// to one interval older than the fault).
fn earliest_takeover() -> Duration {
    Duration::from_secs(5 + fence_wait() - 1)
}

/// A fault that ends "before the takeover" ends here: past the lease (4 s), so the keeper
/// has stopped the container, and past --dead-after, so host 2 has judged the holder dead,
/// but well before it may take the volume over.
const BEFORE_TAKEOVER: Duration = Duration::from_secs(10);
/// "Long after the takeover".
const LONG_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The holder's network link is cut: Swarm, its peers and the export lose it.
    Link,
    /// The holder's GlusterFS client is stopped (SIGSTOP), then continued.
    ClientFrozen,
    /// The holder's caravan daemon is SIGKILLed, then started again.
    DaemonKilled,
    /// The holder's caravan daemon is stopped (SIGSTOP), then continued.
    DaemonFrozen,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Back {
    BeforeTakeover,
    JustAfter,
    LongAfter,
}

/// What one round saw.
#[derive(Debug)]
struct Round {
    fault: Fault,
    back: Back,
    log: PathBuf,
    /// When host 2 got the volume, after the fault began.
    granted: Duration,
    /// Whether the old container was gone by then.
    old_gone_at_grant: bool,
    /// When the old container was gone (its process exited), after the fault began.
    old_gone: Option<Duration>,
    /// Whether host 2 got it by a takeover (not a release).
    takeover: bool,
}

fn begin(fault: Fault, k: u32, holder: &mut Daemon) {
    let k = k.to_string();
    match fault {
        Fault::Link => drop(ok(&["testbed", "link", &k, "down"])),
        Fault::ClientFrozen => drop(ok(&["testbed", "client", &k, "freeze"])),
        Fault::DaemonKilled => holder.kill9(),
        Fault::DaemonFrozen => signal(holder, nix::sys::signal::Signal::SIGSTOP),
    }
}

fn end(fault: Fault, k: u32, holder: &mut Daemon) {
    let k = k.to_string();
    match fault {
        Fault::Link => drop(ok(&["testbed", "link", &k, "up"])),
        Fault::ClientFrozen => drop(ok(&["testbed", "client", &k, "thaw"])),
        Fault::DaemonKilled => holder.spawn(),
        Fault::DaemonFrozen => signal(holder, nix::sys::signal::Signal::SIGCONT),
    }
}

fn signal(d: &Daemon, s: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid()), s).unwrap();
}

/// Host 2's writer: one line appended and synced, as a container of the new holder.
fn append(log: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    writeln!(f, "{line}").unwrap();
    f.sync_all().unwrap();
}

fn append_for(log: &Path, from: &mut usize, how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        append(log, &format!("new {from}"));
        *from += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The old writer's lines after the new writer's first, and how many it wrote before.
fn late_lines(log: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap();
    let all: Vec<&str> = text.lines().collect();
    let first = all
        .iter()
        .position(|l| l.starts_with("new "))
        .expect("the new writer's lines");
    let late = all[first..]
        .iter()
        .filter(|l| !l.starts_with("new "))
        .map(|l| l.to_string())
        .collect();
    (first, late)
}

/// One round on holder host `k` (1 or 3), with host 2 taking over; see the module's text.
fn round(
    h2: &Daemon,
    holder: &mut Daemon,
    k: u32,
    fault: Fault,
    back: Back,
    scratch: &Path,
) -> Round {
    let v = format!("w{k}-{fault:?}-{back:?}").to_lowercase();
    let old_id = format!("old-{v}");
    holder.ok(
        "VolumeDriver.Create",
        &format!(r#"{{"Name":"{v}","Opts":{{"access":"exclusive"}}}}"#),
    );
    let mp = PathBuf::from(
        holder.ok(
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{v}","ID":"{old_id}"}}"#),
        )["Mountpoint"]
            .as_str()
            .unwrap(),
    );
    let mut old = util::line_writer(&mp, &scratch.join(&v), "old", 50, true);
    util::eventually(
        Duration::from_secs(10),
        "the old container to write",
        || std::fs::read_to_string(mp.join("log")).is_ok_and(|t| t.lines().count() > 20),
    );
    // A daemon started again counts the fences it learns of from zero.
    let fences_before = if fault == Fault::DaemonKilled {
        0
    } else {
        holder.api("GET", "/v1/info", "").1["fencing"]["fences"]
            .as_u64()
            .unwrap_or(0)
    };

    begin(fault, k, holder);
    let t0 = Instant::now();
    let gone = watch_exit(old.0.id(), t0);
    let mut ended = false;
    if back == Back::BeforeTakeover {
        // A scheduled point of the fault, not a wait for something to happen.
        std::thread::sleep(BEFORE_TAKEOVER.saturating_sub(t0.elapsed()));
        end(fault, k, holder);
        ended = true;
    }
    // Host 2 asks until it gets the volume; meanwhile, once the holder is back, the old
    // container's end is told to it as dockerd would (an Unmount of its ID).
    let mut released = false;
    let granted = loop {
        let r = h2.plugin(
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{v}","ID":"new-{v}"}}"#),
        );
        if r["Err"].as_str().is_some_and(str::is_empty) {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < earliest_takeover() + Duration::from_secs(30),
            "{fault:?}/{back:?}: host 2 did not get {v} within {:?}; last error: {}",
            earliest_takeover() + Duration::from_secs(30),
            r["Err"]
        );
        if ended && !released && old.0.try_wait().unwrap().is_some() {
            let u = holder.plugin(
                "VolumeDriver.Unmount",
                &format!(r#"{{"Name":"{v}","ID":"{old_id}"}}"#),
            );
            released = u["Err"].as_str().is_some_and(str::is_empty);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let old_gone_at_grant = old.0.try_wait().unwrap().is_some();
    let log = h2.mountpoint(&v).join("log");
    let mut n = 0;
    append(&log, "new 0");
    n += 1;
    match back {
        Back::BeforeTakeover => {}
        Back::JustAfter => end(fault, k, holder),
        Back::LongAfter => {
            append_for(&log, &mut n, LONG_AFTER);
            end(fault, k, holder);
        }
    }
    // The new writer goes on past the fault's end, while anything the old holder held
    // would land.
    append_for(&log, &mut n, Duration::from_secs(5));
    let st = util::status(h2, &v);
    let takeover = st["takeovers"].as_array().is_some_and(|t| !t.is_empty());
    // The holder says what its keeper did (the daemon killed and started again takes the
    // keeper's report when it starts).
    util::eventually(
        Duration::from_secs(30),
        "the old holder to report its fence",
        || {
            holder.api("GET", "/v1/info", "").1["fencing"]["fences"]
                .as_u64()
                .unwrap_or(0)
                > fences_before
        },
    );
    // The old container was SIGKILLed; a host's dockerd then unmounts it.
    util::eventually(Duration::from_secs(30), "the old container gone", || {
        old.0.try_wait().unwrap().is_some()
    });
    let _ = holder.plugin(
        "VolumeDriver.Unmount",
        &format!(r#"{{"Name":"{v}","ID":"{old_id}"}}"#),
    );
    let old_gone = gone.join().unwrap();
    Round {
        fault,
        back,
        log,
        granted,
        old_gone_at_grant,
        old_gone,
        takeover,
    }
}

/// When process `pid` (a child of this test) exits, after `t0`: a watcher reading its
/// state every 50 ms (an exited child stays a zombie until it is waited for), for at most
/// 5 minutes.
fn watch_exit(pid: u32, t0: Instant) -> std::thread::JoinHandle<Option<Duration>> {
    std::thread::spawn(move || {
        while t0.elapsed() < Duration::from_secs(300) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command's closing parenthesis.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next());
            if matches!(state, None | Some('Z') | Some('X')) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
}

fn report(r: &Round) {
    let (old_lines, late) = late_lines(&r.log);
    eprintln!(
        "one writer: {:?}, back {:?}: host 2 got it {:.1} s after the fault ({}), the old container {} by then (gone {}); {} lines of the old writer, {} after the new writer's first",
        r.fault,
        r.back,
        r.granted.as_secs_f64(),
        if r.takeover { "a takeover" } else { "a release" },
        if r.old_gone_at_grant { "gone" } else { "STILL THERE" },
        r.old_gone
            .map(|d| format!("{:.1} s after the fault", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into()),
        old_lines,
        late.len()
    );
}

fn check(r: &Round, when: &str) {
    let (old_lines, late) = late_lines(&r.log);
    assert!(
        late.is_empty(),
        "{:?}/{:?} ({when}): the old writer's lines after the new writer's first: {late:?}",
        r.fault,
        r.back
    );
    assert!(
        old_lines > 20,
        "the old writer's lines are kept: {old_lines}"
    );
    match r.back {
        // The holder came back before the fence bound: it keeps the volume, and its
        // container's end (the keeper killed it) releases it. No takeover.
        Back::BeforeTakeover => assert!(!r.takeover, "{r:?}"),
        Back::JustAfter | Back::LongAfter => {
            assert!(r.takeover, "{r:?}");
            assert!(
                r.granted >= earliest_takeover(),
                "taken over before the fence bound (--dead-after + --fence-wait less one heartbeat): {r:?}"
            );
            // The failover bound: the fence bound + 3 s (a round and the retry).
            assert!(
                r.granted <= Duration::from_secs(5 + fence_wait() + 3),
                "taken over later than the fence bound + 3 s: {r:?}"
            );
        }
    }
    // A container that its host's daemon or caravan itself can still stop is stopped
    // before another gets the volume: granted only once it is gone.
    if matches!(r.fault, Fault::DaemonKilled | Fault::DaemonFrozen) {
        assert!(r.old_gone_at_grant, "{r:?}");
    }
}

/// Every fault of issue 29 at every point, two at a time: host 3 and host 1 each hold a
/// volume and fail in their own way, host 2 takes both over. Then an upgrade: host 3's
/// daemon restarted within --dead-after keeps the volume and its container.
#[test]
fn no_line_of_an_old_writer_follows_the_new_writers_first_whatever_fails() {
    if !util::require_root("no_line_of_an_old_writer_follows_the_new_writers_first_whatever_fails")
    {
        return;
    }
    ok(&["testbed", "up", "3"]);
    let timeouts = match untuned() {
        true => "default".to_string(),
        false => gluster_timeouts().to_string(),
    };
    ok(&["testbed", "timeouts", &timeouts]);
    for k in ["1", "2", "3"] {
        ok(&["testbed", "client", k, "remount"]);
    }
    let flags = flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut bed = three_hosts("o", "one-writer", &flags);
    if untuned() {
        let info = bed.daemons[1].api("GET", "/v1/info", "").1;
        assert_eq!(info["fencing"]["fence_wait_secs"], 52.0, "{info}");
    }
    let scratch = util::Scratch::new();
    let [h1, h2, h3] = &mut bed.daemons[..] else {
        unreachable!()
    };
    let h2 = &*h2;
    let mut rounds = Vec::new();
    let pairs = [
        (Fault::Link, Fault::ClientFrozen, Back::BeforeTakeover),
        (Fault::Link, Fault::ClientFrozen, Back::JustAfter),
        (Fault::Link, Fault::ClientFrozen, Back::LongAfter),
        (
            Fault::DaemonKilled,
            Fault::DaemonFrozen,
            Back::BeforeTakeover,
        ),
        (Fault::DaemonKilled, Fault::DaemonFrozen, Back::JustAfter),
    ];
    // `CARAVAN_ONE_WRITER_ONLY=just` (or `long`) runs only the pair of a cut link and a
    // frozen client whose fault ends just after the takeover (or long after it): the
    // failover benchmark of docs/benchmarks.md.
    let only = std::env::var("CARAVAN_ONE_WRITER_ONLY").ok();
    let only = only.as_deref().map(|o| match o {
        "just" => Back::JustAfter,
        "long" => Back::LongAfter,
        other => panic!("CARAVAN_ONE_WRITER_ONLY is `just` or `long`, not {other:?}"),
    });
    for (on3, on1, back) in pairs {
        if only.is_some_and(|o| o != back || on3 != Fault::Link) {
            continue;
        }
        let dir = scratch.path();
        let (r3, r1) = std::thread::scope(|s| {
            let a = s.spawn(|| round(h2, h3, 3, on3, back, dir));
            let b = s.spawn(|| round(h2, h1, 1, on1, back, dir));
            (a.join(), b.join())
        });
        for r in [r3, r1] {
            let r = r.unwrap_or_else(|p| std::panic::resume_unwind(p));
            report(&r);
            check(&r, "right after its round");
            rounds.push(r);
        }
    }

    if only.is_some() {
        return;
    }
    // An upgrade: host 3's daemon stopped and started again within --dead-after keeps
    // the volume and its container, which goes on writing; host 2 is refused meanwhile.
    let v = "w3-upgrade";
    h3.ok(
        "VolumeDriver.Create",
        &format!(r#"{{"Name":"{v}","Opts":{{"access":"exclusive"}}}}"#),
    );
    let mp = PathBuf::from(
        h3.ok(
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{v}","ID":"old"}}"#),
        )["Mountpoint"]
            .as_str()
            .unwrap(),
    );
    let mut old = util::line_writer(&mp, &scratch.path().join(v), "old", 50, true);
    let lines = || {
        std::fs::read_to_string(mp.join("log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    util::eventually(Duration::from_secs(10), "the container to write", || {
        lines() > 5
    });
    let restart = Instant::now();
    h3.stop();
    h3.spawn();
    eprintln!(
        "one writer: host 3's daemon restarted in {:.2} s",
        restart.elapsed().as_secs_f64()
    );
    let before = lines();
    let refused = h2.err(
        "VolumeDriver.Mount",
        &format!(r#"{{"Name":"{v}","ID":"new"}}"#),
    );
    assert!(
        refused.contains("held by node o3, which is alive") && refused.contains("stop-first"),
        "{refused}"
    );
    // Twice --dead-after past the restart: still writing, never fenced.
    let until = restart + Duration::from_secs(10);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    assert!(
        old.0.try_wait().unwrap().is_none(),
        "the container was stopped"
    );
    assert!(lines() > before + 20, "the container stopped writing");
    let st = util::status(h3, v);
    assert_eq!(st["holder"]["node"], "o3", "{st}");
    let info = h3.api("GET", "/v1/info", "").1;
    // The restarted daemon counts fences from zero: none since.
    assert_eq!(info["fencing"]["fences"], 0, "{info}");
    drop(old);

    // Minutes later, every round's log again: nothing held anywhere landed late.
    for r in &rounds {
        check(r, "at the end of the test");
    }
}
