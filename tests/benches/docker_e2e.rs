//! What a Docker user sees: caravan against Docker's own `local` driver, side by side in
//! one run, on the same filesystem.
//!
//! 1. End to end: `docker volume create` + `docker run --rm -v vol:/data busybox true` +
//!    `docker volume rm`, with `-d caravan` and with `-d local` on a host folder
//!    (`--opt type=none --opt o=bind --opt device=...`), runs interleaved.
//! 2. Data path: sequential write and read and small-file creates inside one container
//!    that has a caravan volume and, beside it, a bind mount of that volume's data folder
//!    (the same filesystem used directly). caravan only bind-mounts, so the ratio should
//!    be 1.0 within noise.
//! 3. All at once: 50 `docker run -v` started together, each on a volume of its own,
//!    against the same with `-d local` volumes: the wall time until all have exited.
//!
//! `cargo bench --bench docker_e2e` (as root, with dockerd up: `scripts/docker-up`). Under
//! `cargo test` (no `--bench` argument) it runs a small smoke version. Environment:
//! - `CARAVAN_BENCH_ROOT`: the shared root (default: a folder under /var/lib/caravan-test;
//!   with only `CARAVAN_BENCH_ROOTS` set, the first of those);
//! - `CARAVAN_BENCH_REPS`: interleaved runs per figure (default 10; smoke: 2);
//! - `CARAVAN_BENCH_MB`: size of the sequential file (default 1024; smoke: 8);
//! - `CARAVAN_BENCH_FILES`: small files per run (default 5000; smoke: 50);
//! - `CARAVAN_BENCH_BURST`: containers started at once, each on its own volume (default
//!   50; smoke: 3), in up to three interleaved rounds;
//! - `CARAVAN_BENCH_PARTS`: which of `e2e`, `burst` and `data` to run (default all three).
//!
//! Each figure should take well over a second: `docker exec` itself varies by several
//! milliseconds from call to call, and on a fast disk 256 MiB is written in 0.2 s.

#[path = "../util/mod.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::time::Instant;

use util::docker::{docker, docker_ok, start_shared_driver, DRIVER, IMAGE};
use util::env_num;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !util::docker::available("docker_e2e benchmark") {
        return;
    }
    let reps = env_num("CARAVAN_BENCH_REPS", if full { 10 } else { 2 }).max(1);
    let mb = env_num("CARAVAN_BENCH_MB", if full { 1024 } else { 8 });
    let files = env_num("CARAVAN_BENCH_FILES", if full { 5000 } else { 50 });
    let first_of_roots = std::env::var("CARAVAN_BENCH_ROOTS")
        .ok()
        .and_then(|l| l.split(':').next().map(|r| PathBuf::from(r).join("docker")));
    let root = std::env::var_os("CARAVAN_BENCH_ROOT")
        .map(PathBuf::from)
        .or(first_of_roots)
        .unwrap_or_else(|| PathBuf::from("/var/lib/caravan-test/bench-root"));
    std::fs::create_dir_all(&root).unwrap();
    // The `local` driver's folders and the plain bind folder live on the same root, so
    // both sides use the same filesystem.
    let plain = root.join("plain");
    let _ = std::fs::remove_dir_all(&plain);
    std::fs::create_dir_all(&plain).unwrap();
    let mut daemon = start_shared_driver(Some(&root));
    println!(
        "caravan docker benchmark: root {}, {reps} interleaved runs per figure",
        root.display()
    );

    let parts = std::env::var("CARAVAN_BENCH_PARTS").unwrap_or_else(|_| "e2e,burst,data".into());
    let part = |p: &str| parts.split(',').any(|q| q.trim() == p);
    if part("e2e") {
        end_to_end(&plain, reps);
    }
    if part("burst") {
        let burst = env_num("CARAVAN_BENCH_BURST", if full { 50 } else { 3 });
        all_at_once(&plain, reps.min(3), burst);
    }
    if part("data") {
        data_path(&root, reps, mb, files);
    }
    let _ = std::fs::remove_dir_all(&plain);
    // SIGTERM, not a kill: the daemon removes its spec file, and dockerd then does not
    // wait 15 s on every later `docker volume ls` for a plugin that is gone.
    daemon.stop();
}

#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Caravan,
    Local,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Caravan => "caravan",
            Driver::Local => "local",
        }
    }
}

/// The two drivers, in alternating order from run to run so that neither always goes
/// first (warm caches, dockerd's own state).
fn interleaved(run: usize) -> [Driver; 2] {
    if run % 2 == 0 {
        [Driver::Caravan, Driver::Local]
    } else {
        [Driver::Local, Driver::Caravan]
    }
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn end_to_end(plain: &Path, reps: usize) {
    // [driver][step] → samples in ms; steps: create, run, rm, total.
    let mut samples = vec![vec![Vec::new(); 4]; 2];
    // One untimed round first: the first `docker run` of a process pays for loading the
    // image's layers and dockerd's first call to the plugin.
    for run in 0..=reps {
        for driver in interleaved(run) {
            let name = format!("bench-e2e-{}-{run}", driver.name());
            let create = timed(|| create_volume(driver, plain, &name));
            let run_ms = timed(|| run_on(&name));
            let rm = timed(|| {
                docker_ok(&["volume", "rm", &name]);
            });
            if run > 0 {
                let s = &mut samples[driver as usize];
                for (i, v) in [create, run_ms, rm, create + run_ms + rm]
                    .into_iter()
                    .enumerate()
                {
                    s[i].push(v);
                }
            }
        }
    }
    println!("\ndocker end to end: median of {reps} interleaved runs");
    let steps = [
        "docker volume create",
        "docker run --rm -v vol:/data true",
        "docker volume rm",
        "all three",
    ];
    print_pairs(
        ["step", "caravan ms", "local ms", "caravan/local"],
        &steps,
        &samples,
    );
}

/// `docker run --rm` of the test image with volume `name` at /data.
fn run_on(name: &str) {
    let mount = format!("{name}:/data");
    docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        IMAGE,
        "true",
    ]);
}

/// Creates a volume of `driver` named `name` (a host folder under `plain` for `local`).
fn create_volume(driver: Driver, plain: &Path, name: &str) {
    match driver {
        Driver::Caravan => {
            docker_ok(&["volume", "create", "-d", DRIVER, name]);
        }
        Driver::Local => {
            let dir = plain.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let device = format!("device={}", dir.display());
            docker_ok(&[
                "volume",
                "create",
                "-d",
                "local",
                "--opt",
                "type=none",
                "--opt",
                "o=bind",
                "--opt",
                &device,
                name,
            ]);
        }
    }
}

/// `burst` containers started at once, each with a volume of its own (made beforehand),
/// the way a stack or a rescheduled node starts them: the wall time from the first
/// `docker run` to the last one's exit, caravan against `local`.
fn all_at_once(plain: &Path, rounds: usize, burst: usize) {
    let mut samples = vec![vec![Vec::new()]; 2];
    for round in 0..rounds {
        for driver in interleaved(round) {
            let names: Vec<String> = (0..burst)
                .map(|i| format!("bench-burst-{}-{round}-{i}", driver.name()))
                .collect();
            for name in &names {
                create_volume(driver, plain, name);
            }
            let wall = timed(|| {
                std::thread::scope(|scope| {
                    for name in &names {
                        scope.spawn(move || run_on(name));
                    }
                });
            });
            for name in &names {
                docker_ok(&["volume", "rm", name]);
            }
            samples[driver as usize][0].push(wall);
        }
    }
    println!(
        "
{burst} containers started at once, each on its own volume: median of {rounds} interleaved rounds"
    );
    print_pairs(
        ["step", "caravan ms", "local ms", "caravan/local"],
        &[format!("{burst} x docker run --rm -v vol:/data true")],
        &samples,
    );
}

fn data_path(root: &Path, reps: usize, mb: usize, files: usize) {
    let volume = "bench-datapath";
    let container = "caravan-bench-datapath";
    let _ = docker(&["rm", "-f", container]);
    let _ = docker(&["volume", "rm", "-f", volume]);
    docker_ok(&["volume", "create", "-d", DRIVER, volume]);
    // The baseline is the same filesystem used directly: a bind mount of the volume's own
    // data folder, each side writing in a folder of its own there. A plain folder
    // elsewhere on the root is not comparable on this test machine: on its virtual disk,
    // where ext4 places a folder changed small-file creates by 1.5-2x.
    let bind = root.join("volumes").join(volume).join("data");
    let caravan_mount = format!("{volume}:/c");
    let bind_mount = format!("{}:/b", bind.display());
    docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        container,
        "-v",
        &caravan_mount,
        "-v",
        &bind_mount,
        IMAGE,
        "sleep",
        "3600",
    ]);
    let exec = |script: &str| {
        timed(|| {
            docker_ok(&["exec", container, "sh", "-c", script]);
        })
    };
    // `docker exec` itself costs tens of milliseconds; it is measured here and taken off
    // every figure below.
    let overhead = median((0..5).map(|_| exec("true")).collect());
    let mut samples = vec![vec![Vec::new(); 3]; 2];
    for run in 0..reps {
        for driver in interleaved(run) {
            let dir = match driver {
                Driver::Caravan => "/c/caravan",
                Driver::Local => "/b/direct",
            };
            // Each measure starts from a quiet disk: nothing left to write back from the
            // step before (a deleted tree, the other side's files), nothing cached.
            drop_caches();
            let write = exec(&format!(
                "mkdir -p {dir} && dd if=/dev/zero of={dir}/seq bs=1M count={mb} conv=fsync 2>/dev/null"
            )) - overhead;
            drop_caches();
            let read = exec(&format!("dd if={dir}/seq of=/dev/null bs=1M 2>/dev/null")) - overhead;
            drop_caches();
            let small = exec(&format!(
                "mkdir {dir}/small && cd {dir}/small && i=0 && \
                 while [ $i -lt {files} ]; do echo x > f$i; i=$((i+1)); done"
            )) - overhead;
            exec(&format!("rm -rf {dir}/seq {dir}/small"));
            drop_caches();
            let s = &mut samples[driver as usize];
            let per_sec = |n: f64, ms: f64| n / (ms.max(0.001) / 1e3);
            s[0].push(per_sec(mb as f64, write));
            s[1].push(per_sec(mb as f64, read));
            s[2].push(per_sec(files as f64, small));
        }
    }
    let _ = docker(&["rm", "-f", container]);
    let _ = docker(&["volume", "rm", "-f", volume]);
    println!(
        "\ndata path inside one container: median of {reps} interleaved runs \
         (docker exec's own {overhead:.1} ms taken off)"
    );
    let rows = [
        format!("sequential write {mb} MiB, MiB/s"),
        format!("sequential read {mb} MiB, MiB/s"),
        format!("{files} small files created, /s"),
    ];
    print_pairs(
        ["measure", "caravan", "direct", "caravan/direct"],
        &rows,
        &samples,
    );
}

/// One line per measure: each side's median, their ratio, and the middle half of the
/// ratios within each run's pair, which shows how much the machine itself varies from run
/// to run (on the test machine's virtual disk, a lot).
fn print_pairs(header: [&str; 4], rows: &[impl AsRef<str>], samples: &[Vec<Vec<f64>>]) {
    println!(
        "{:<34} {:>11} {:>11} {:>14} {:>17}",
        header[0], header[1], header[2], header[3], "pairs, mid half"
    );
    for (i, row) in rows.iter().enumerate() {
        let (c, b) = (&samples[0][i], &samples[1][i]);
        let mut ratios: Vec<f64> = c.iter().zip(b).map(|(c, b)| c / b).collect();
        ratios.sort_by(f64::total_cmp);
        let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
        let (mc, mb) = (median(c.clone()), median(b.clone()));
        println!(
            "{:<34} {mc:>11.1} {mb:>11.1} {:>14.2} {:>10.2}-{:<6.2}",
            row.as_ref(),
            mc / mb,
            at(0.25),
            at(0.75)
        );
    }
}

/// Empties the page cache so that the read measures the filesystem, not memory.
fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { nix::libc::sync() };
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("could not drop the page cache ({e}); reads may come from memory");
    }
}
