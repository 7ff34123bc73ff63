//! Driving the multi-host test bed (scripts/testbed) from tests: its commands, and the
//! docker CLI of each simulated host.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `scripts/<args[0]> args[1..]` with this build's caravan.
pub fn script(args: &[&str]) -> Output {
    let dir = env!("CARGO_MANIFEST_DIR");
    Command::new(format!("{dir}/scripts/{}", args[0]))
        .args(&args[1..])
        .env("CARAVAN", super::caravan_bin())
        .output()
        .expect("run a script")
}

/// [`script`], which must succeed; its trimmed stdout.
pub fn ok(args: &[&str]) -> String {
    let out = script(args);
    assert!(
        out.status.success(),
        "{}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker` on host K.
pub fn dk(k: u32, args: &[&str]) -> Output {
    let k = k.to_string();
    let mut all = vec!["testbed", "docker", &k];
    all.extend_from_slice(args);
    script(&all)
}

/// `docker` on host K, which must succeed; its trimmed stdout.
pub fn dk_ok(k: u32, args: &[&str]) -> String {
    stdout_ok(k, &format!("docker {}", args.join(" ")), dk(k, args))
}

/// `docker` on host K, which must fail; its stderr.
pub fn dk_err(k: u32, args: &[&str]) -> String {
    let out = dk(k, args);
    assert!(
        !out.status.success(),
        "h{k}: docker {} should have failed",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The output of a command on host K that must have succeeded.
pub fn stdout_ok(k: u32, what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "h{k}: {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Three caravan daemons, `{prefix}1` to `{prefix}3`, one on each test-bed host's GlusterFS
/// mount (in the export's folder `sub`), started with `flags`. Brings the test bed up, and
/// tears it down (brick thawed, links restored) when dropped, after the daemons.
pub fn three_hosts(prefix: &str, sub: &str, flags: &[&str]) -> ThreeHosts {
    ok(&["testbed", "up", "3"]);
    let down = Down;
    let bed = PathBuf::from("/var/lib/caravan-testbed");
    let scratch = super::Scratch::new();
    let roots: Vec<PathBuf> = (1..=3)
        .map(|k| bed.join(format!("h{k}/export/{sub}")))
        .collect();
    let daemons = roots
        .iter()
        .enumerate()
        .map(|(i, root)| {
            let node = format!("{prefix}{}", i + 1);
            let spec = scratch.path().join(format!("spec-{node}"));
            super::Daemon::start_with(scratch.path(), root, &node, spec, "caravan", flags)
        })
        .collect();
    ThreeHosts {
        daemons,
        roots,
        _scratch: scratch,
        _down: down,
    }
}

/// What [`three_hosts`] starts; fields drop in this order.
pub struct ThreeHosts {
    pub daemons: Vec<super::Daemon>,
    pub roots: Vec<PathBuf>,
    _scratch: super::Scratch,
    _down: Down,
}

/// Tears the test bed down whatever happened: the brick and every client thawed and every
/// link restored first, so that nothing is left waiting on it.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = script(&["testbed", "export", "thaw"]);
        for k in ["1", "2", "3"] {
            let _ = script(&["testbed", "link", k, "up"]);
            let _ = script(&["testbed", "client", k, "thaw"]);
        }
        let _ = script(&["testbed", "down"]);
    }
}
