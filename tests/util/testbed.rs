//! Driving the multi-host test bed (scripts/testbed) from tests: its commands, and the
//! docker CLI of each simulated host.

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
