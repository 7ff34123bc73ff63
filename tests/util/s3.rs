//! The S3-compatible server of the backup tests (moto, through `scripts/s3-server`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running S3 server with one bucket; stopped on drop.
pub struct S3Server {
    dir: PathBuf,
    /// The `AWS_*` settings a daemon needs to reach it.
    pub env: Vec<(String, String)>,
    pub bucket: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server")
}

impl S3Server {
    /// Starts one on `addr` (`HOST:PORT`), inside network namespace `netns` if given.
    pub fn start(dir: &Path, addr: &str, bucket: &str, netns: Option<&str>) -> S3Server {
        let mut cmd = Command::new(script());
        cmd.args(["start", dir.to_str().unwrap(), addr, bucket]);
        if let Some(ns) = netns {
            cmd.env("S3_NETNS", ns);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "scripts/s3-server start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("s3.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Server {
            dir: dir.to_path_buf(),
            env,
            bucket: bucket.to_string(),
        }
    }

    /// On loopback, at a free port.
    pub fn local(dir: &Path) -> S3Server {
        Self::start(
            dir,
            &format!("127.0.0.1:{}", super::free_port()),
            "caravan-test",
            None,
        )
    }

    pub fn env_file(&self) -> PathBuf {
        self.dir.join("s3.env")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}
