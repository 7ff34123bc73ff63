//! Plugin-call latency and throughput, measured against a real daemon over its socket with
//! keep-alive connections (as dockerd holds them), next to the floor of the shared root:
//! one durable small write, and one lock/unlock of a file, measured in the same run.
//!
//! `cargo bench --bench plugin_calls` (as root; see docs/benchmarks.md for options). Under
//! `cargo test` (no `--bench` argument) it runs a small smoke version, so CI keeps it working.
//!
//! Environment:
//! - `CARAVAN_BENCH_ROOT`: the shared root to measure (default: a temporary local folder);
//! - `CARAVAN_BENCH_OPS`: calls per client per operation (default 200; smoke: 10);
//! - `CARAVAN_BENCH_LIST_VOLUMES`: the largest root of the scale figures, which are taken at
//!   100, 1 000 and 10 000 volumes up to it (default 10000; smoke: 200);
//! - `CARAVAN_BENCH_CLIENTS`: concurrent clients per round (default `1,16,64`; several
//!   roots: `1,16`).
//! - `CARAVAN_BENCH_LOG`: the daemons' `--log-level` (default `warn`; `debug` logs each hold
//!   of the cluster lock and each commit with their times).
//! - `CARAVAN_BENCH_OPTS`: the volumes' options, a JSON object given to every Create
//!   (default `{}`; `{"access":"exclusive"}` measures exclusive volumes, with their claim
//!   and the fencing lease).
//!
//! While the client rounds run, a watcher reads every daemon's heartbeat file through the
//! last root (another host's mount of the export) every 100 ms and reports the longest gap
//! between two beats of each: a live node must never look silent because it was busy
//! (target: under twice the heartbeat interval).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../util/mod.rs"]
mod util;
use util::env_num;
mod support;
use support::{parallel, BenchDaemon, Conn, Row};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !util::require_root("plugin_calls benchmark") {
        return;
    }
    let ops = env_num("CARAVAN_BENCH_OPS", if full { 200 } else { 10 });
    let list_volumes = env_num(
        "CARAVAN_BENCH_LIST_VOLUMES",
        if full { 10_000 } else { 200 },
    );
    let scratch = tempfile::Builder::new()
        .prefix("caravan-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    // One daemon per root: CARAVAN_BENCH_ROOTS=r1:r2:r3 measures several hosts sharing
    // one export (each root is that host's mount of it), 16 clients per host at once.
    let roots: Vec<PathBuf> = match (
        std::env::var("CARAVAN_BENCH_ROOTS"),
        std::env::var_os("CARAVAN_BENCH_ROOT"),
    ) {
        (Ok(list), _) => list.split(':').map(PathBuf::from).collect(),
        (Err(_), Some(r)) => vec![PathBuf::from(r)],
        (Err(_), None) => vec![scratch.path().join("root")],
    };
    for r in &roots {
        fs::create_dir_all(r).unwrap();
    }
    let root = roots[0].clone();

    println!(
        "caravan plugin-call benchmark: root {} ({}), {ops} calls per client per op",
        root.display(),
        fs_kind(&root)
    );
    let floor = Floor::measure(&root, if full { 200 } else { 20 });
    println!(
        "floor: durable small write p50 {:.3} ms, lock+unlock p50 {:.3} ms, sum {:.3} ms",
        floor.write_ms,
        floor.lock_ms,
        floor.total()
    );

    let daemons: Vec<BenchDaemon> = roots
        .iter()
        .enumerate()
        .map(|(i, r)| BenchDaemon::start(scratch.path(), r, &format!("bench{i}")))
        .collect();
    let sockets: Vec<PathBuf> = daemons.iter().map(|d| d.socket.clone()).collect();
    let daemon = &daemons[0];
    // Idle: started, one heartbeat round done, no volume yet.
    std::thread::sleep(Duration::from_millis(1500));
    let idle_rss = daemon.rss_kib();

    let default_clients = if roots.len() == 1 { "1,16,64" } else { "1,16" };
    let client_counts: Vec<usize> = std::env::var("CARAVAN_BENCH_CLIENTS")
        .unwrap_or_else(|_| default_clients.into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let watch = HeartbeatWatch::start(
        roots.last().unwrap(),
        (0..roots.len()).map(|i| format!("bench{i}")).collect(),
    );
    let mut rows = Vec::new();
    for &clients in &client_counts {
        rows.extend(run_round(&sockets, clients, ops, &format!("c{clients}")));
    }
    let gaps = watch.finish();

    // Scale: fill to each size with 16 clients (this doubles as a sustained-create
    // figure), then time one client's Create, Mount, Unmount, Remove and List there.
    let mut sizes: Vec<usize> = [100, 1_000, 10_000]
        .into_iter()
        .filter(|&n| n < list_volumes)
        .collect();
    sizes.push(list_volumes);
    let mut filled = 0;
    let mut scale_rows = Vec::new();
    for &size in &sizes {
        let t = Instant::now();
        let add = (size - filled).div_ceil(16);
        let fill = parallel(
            std::slice::from_ref(&daemon.socket),
            16,
            add,
            &|c, i, conn: &mut Conn| {
                conn.call(
                    "Create",
                    &format!(r#"{{"Name":"fill-{filled}-{c}-{i}","Opts":{}}}"#, opts()),
                )
            },
        );
        filled += fill.len();
        let fill_secs = t.elapsed().as_secs_f64();
        println!(
            "filled to {filled} volumes: {} creates in {:.2} s ({:.0}/s with 16 clients)",
            fill.len(),
            fill_secs,
            fill.len() as f64 / fill_secs
        );
        scale_rows.extend(run_at_scale(
            &daemon.socket,
            filled,
            if full { 50 } else { 5 },
        ));
    }
    let rss = daemon.rss_kib();

    println!();
    print_rows(&rows, &floor);
    println!("\nat scale, one client:");
    print_rows(&scale_rows, &floor);
    print_scaling(&rows);
    for (node, gap, beats) in &gaps {
        println!(
            "heartbeat under load: {node}: longest gap between beats seen through another mount {:.0} ms (to 0.1 s) over {beats} beats ({:.2}x the 1 s interval; target < 2x)",
            gap.as_secs_f64() * 1e3,
            gap.as_secs_f64()
        );
    }
    println!(
        "\ndaemon RSS: idle {:.1} MiB, with {filled} volumes {:.1} MiB",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    drop(daemons);
}

fn print_rows(rows: &[Row], floor: &Floor) {
    println!(
        "{:<10} {:>7} {:>12} {:>7} {:>9} {:>9} {:>9} {:>10}",
        "call", "clients", "volumes", "n", "p50 ms", "p99 ms", "ops/s", "p50/floor"
    );
    for r in rows {
        println!(
            "{:<10} {:>7} {:>12} {:>7} {:>9.3} {:>9.3} {:>9.0} {:>10.2}",
            r.op,
            r.clients,
            r.volumes,
            r.n,
            r.p50,
            r.p99,
            r.ops_per_sec,
            r.p50 / floor.total()
        );
    }
}

/// The volumes' options (`CARAVAN_BENCH_OPTS`), checked to be a JSON object.
fn opts() -> &'static str {
    static OPTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OPTS.get_or_init(|| {
        let text = std::env::var("CARAVAN_BENCH_OPTS").unwrap_or_else(|_| "{}".into());
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("CARAVAN_BENCH_OPTS must be a JSON object: {e}"));
        assert!(
            v.is_object(),
            "CARAVAN_BENCH_OPTS must be a JSON object, not {v}"
        );
        text
    })
}

/// Group commit at work: each mutating call's throughput with N clients as a multiple of
/// its throughput with one.
fn print_scaling(rows: &[Row]) {
    println!("\nthroughput against one client (group commit):");
    for op in ["Create", "Mount", "Unmount", "Remove", "Lifecycle"] {
        let of_op: Vec<&Row> = rows.iter().filter(|r| r.op == op).collect();
        let Some(one) = of_op.first() else { continue };
        let cells: Vec<String> = of_op
            .iter()
            .map(|r| {
                format!(
                    "{} clients {:.0}/s ({:.1}x)",
                    r.clients,
                    r.ops_per_sec,
                    r.ops_per_sec / one.ops_per_sec
                )
            })
            .collect();
        println!("{op:<10} {}", cells.join(", "));
    }
}

/// One client's calls on a root that holds `volumes` volumes; leaves the count as it was.
fn run_at_scale(socket: &Path, volumes: usize, ops: usize) -> Vec<Row> {
    let sockets = vec![socket.to_path_buf()];
    let label = format!("{volumes} vols");
    let mut rows = Vec::new();
    let mut timed = |op: &'static str, f: &(dyn Fn(usize, usize, &mut Conn) -> Duration + Sync)| {
        let samples = parallel(&sockets, 1, ops, f);
        rows.push(Row::new(op, "1", &label, samples, Duration::ZERO));
    };
    let name = |i: usize| format!("scale-{volumes}-{i}");
    timed("Create", &|_, i, conn| {
        conn.call(
            "Create",
            &format!(r#"{{"Name":"{}","Opts":{}}}"#, name(i), opts()),
        )
    });
    timed("Mount", &|_, i, conn| {
        conn.call(
            "Mount",
            &format!(r#"{{"Name":"{}","ID":"scale"}}"#, name(i)),
        )
    });
    timed("Unmount", &|_, i, conn| {
        conn.call(
            "Unmount",
            &format!(r#"{{"Name":"{}","ID":"scale"}}"#, name(i)),
        )
    });
    timed("Remove", &|_, i, conn| {
        conn.call("Remove", &format!(r#"{{"Name":"{}"}}"#, name(i)))
    });
    timed("List", &|_, _, conn| conn.call("List", "{}"));
    rows
}

/// One round of every call with `clients` concurrent clients. Past 16 clients each makes
/// fewer calls, so that every round with 16 or more clients works on the same number of
/// volumes and their List rows compare.
fn run_round(sockets: &[PathBuf], clients: usize, ops: usize, tag: &str) -> Vec<Row> {
    let ops = if clients > 16 {
        (ops * 16).div_ceil(clients)
    } else {
        ops
    };
    let volumes = format!("{}", clients * ops * sockets.len());
    let mut rows = Vec::new();
    // "16" on one host; "3x16" for three hosts with 16 clients each.
    let label = if sockets.len() == 1 {
        clients.to_string()
    } else {
        format!("{}x{clients}", sockets.len())
    };
    let mut timed = |op: &'static str, f: &(dyn Fn(usize, usize, &mut Conn) -> Duration + Sync)| {
        let t = Instant::now();
        let samples = parallel(sockets, clients, ops, f);
        rows.push(Row::new(op, &label, &volumes, samples, t.elapsed()));
    };
    timed("Create", &|c, i, conn| {
        conn.call(
            "Create",
            &format!(r#"{{"Name":"{tag}-{c}-{i}","Opts":{}}}"#, opts()),
        )
    });
    timed("Get", &|c, i, conn| {
        conn.call("Get", &format!(r#"{{"Name":"{tag}-{c}-{i}"}}"#))
    });
    timed("Mount", &|c, i, conn| {
        conn.call(
            "Mount",
            &format!(r#"{{"Name":"{tag}-{c}-{i}","ID":"bench{c}"}}"#),
        )
    });
    timed("Unmount", &|c, i, conn| {
        conn.call(
            "Unmount",
            &format!(r#"{{"Name":"{tag}-{c}-{i}","ID":"bench{c}"}}"#),
        )
    });
    timed("List", &|_, _, conn| conn.call("List", "{}"));
    timed("Remove", &|c, i, conn| {
        conn.call("Remove", &format!(r#"{{"Name":"{tag}-{c}-{i}"}}"#))
    });
    // A volume's whole life, the mix a busy cluster sees: each sample is four mutating
    // calls, and the row's ops/s counts calls.
    let t = Instant::now();
    let samples = parallel(sockets, clients, ops, &|c, i, conn| {
        let name = format!("{tag}-life-{c}-{i}");
        conn.call(
            "Create",
            &format!(r#"{{"Name":"{name}","Opts":{}}}"#, opts()),
        ) + conn.call("Mount", &format!(r#"{{"Name":"{name}","ID":"b{c}"}}"#))
            + conn.call("Unmount", &format!(r#"{{"Name":"{name}","ID":"b{c}"}}"#))
            + conn.call("Remove", &format!(r#"{{"Name":"{name}"}}"#))
    });
    let mut life = Row::new("Lifecycle", &label, &volumes, samples, t.elapsed());
    life.ops_per_sec *= 4.0;
    rows.push(life);
    rows
}

/// The cost of the durable primitives a commit is made of, on the same root.
struct Floor {
    write_ms: f64,
    lock_ms: f64,
}

impl Floor {
    fn measure(root: &Path, n: usize) -> Floor {
        let dir = root.join(".bench-floor");
        fs::create_dir_all(&dir).unwrap();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let writes = (0..n)
            .map(|i| {
                let t = Instant::now();
                let mut f = fs::File::create(dir.join("probe")).unwrap();
                f.write_all(format!("{i}\n").as_bytes()).unwrap();
                f.sync_all().unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let lock_path = dir.join("lock");
        let locks = (0..n)
            .map(|_| {
                let t = Instant::now();
                let l = caravan::export::lock::ClusterLock::acquire(
                    &lock_path,
                    Instant::now() + Duration::from_secs(5),
                )
                .unwrap();
                l.release();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let _ = fs::remove_dir_all(&dir);
        Floor {
            write_ms: median(writes),
            lock_ms: median(locks),
        }
    }

    fn total(&self) -> f64 {
        self.write_ms + self.lock_ms
    }
}

fn fs_kind(root: &Path) -> String {
    nix::sys::statfs::statfs(root)
        .map(|s| format!("{:?}", s.filesystem_type()))
        .unwrap_or_else(|_| "unknown filesystem".into())
}

/// Reads each daemon's heartbeat file every 100 ms and keeps the longest time between two
/// changes of its sequence number (the view of another node, on this machine's clock).
struct HeartbeatWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(String, Duration, u64)>>,
}

impl HeartbeatWatch {
    fn start(root: &Path, nodes: Vec<String>) -> HeartbeatWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dir = root.join(".caravan/nodes");
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            // node -> (last seq, when it changed, longest gap, beats)
            let mut seen: Vec<(Option<u64>, Instant, Duration, u64)> =
                vec![(None, Instant::now(), Duration::ZERO, 0); nodes.len()];
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                for (i, node) in nodes.iter().enumerate() {
                    let seq = fs::read(dir.join(format!("{node}.json")))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["seq"].as_u64());
                    let (last, at, gap, beats) = &mut seen[i];
                    if seq.is_some() && seq != *last {
                        let now = Instant::now();
                        if last.is_some() {
                            *gap = (*gap).max(now - *at);
                            *beats += 1;
                        }
                        *last = seq;
                        *at = now;
                    }
                }
                // Not faster: on GlusterFS each read costs the brick several requests, and
                // at 20 ms the watcher alone cost the Mount and Lifecycle rows about 15%.
                std::thread::sleep(Duration::from_millis(100));
            }
            nodes
                .into_iter()
                .zip(seen)
                .map(|(n, (_, _, gap, beats))| (n, gap, beats))
                .collect()
        });
        HeartbeatWatch { stop, thread }
    }

    fn finish(self) -> Vec<(String, Duration, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}
