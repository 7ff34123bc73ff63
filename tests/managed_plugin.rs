//! caravan as Docker's managed (v2) plugin, built by `scripts/plugin-build` from this
//! machine's files: created, configured with `docker plugin set`, enabled, used by
//! `docker volume create` and `docker run -v`, refused `disable` while in use, and
//! upgraded through a local registry (Debian's docker-registry) with its volume kept.

mod util;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use util::docker::{docker, docker_ok, run_rm, IMAGE};

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn registry(dir: &Path, port: u16) -> Registry {
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .expect("docker-registry (Debian's docker-registry package; scripts/test installs it)");
    util::eventually(Duration::from_secs(20), "the registry to answer", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Registry(child)
}

/// Removes the container, the volume and the plugins whatever happens (the volume while
/// the plugin still serves, or dockerd keeps a reference to it).
struct Cleanup {
    vol: String,
    plugins: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &format!("{}-sleeper", self.vol)]);
        let _ = docker(&["plugin", "enable", &self.plugins[0]]);
        let _ = docker(&["volume", "rm", "-f", &self.vol]);
        for p in &self.plugins {
            let _ = docker(&["plugin", "disable", "-f", p]);
            let _ = docker(&["plugin", "rm", "-f", p]);
        }
    }
}

fn build(name: &str) -> Duration {
    let t = Instant::now();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/plugin-build");
    let out = Command::new(script)
        .arg(name)
        .arg(util::caravan_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plugin-build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

#[test]
fn the_managed_plugin_serves_volumes_and_keeps_them_across_an_upgrade() {
    if !util::docker::available(
        "the_managed_plugin_serves_volumes_and_keeps_them_across_an_upgrade",
    ) {
        return;
    }
    let s = util::Scratch::new();
    let root = s.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _registry = registry(s.path(), port);
    let repo = format!("127.0.0.1:{port}/caravan-test/caravan");
    let (v1, v2) = (format!("{repo}:v1"), format!("{repo}:v2"));
    // Names of this run's own: a dockerd remembers a volume whose plugin is gone.
    let vol = format!("mp-vol-{port}");
    let sleeper = format!("{vol}-sleeper");
    let mount = format!("{vol}:/data");
    let _cleanup = Cleanup {
        vol: vol.clone(),
        plugins: vec![v1.clone(), v2.clone()],
    };

    let built = build(&v1);
    let root_source = format!("root.source={}", root.display());
    docker_ok(&["plugin", "set", &v1, &root_source, "NODE=mp1"]);
    let t = Instant::now();
    docker_ok(&["plugin", "enable", &v1]);
    docker_ok(&["volume", "create", "-d", &v1, &vol]);
    let first_volume = t.elapsed();
    eprintln!("managed plugin: built and created in {built:.1?}; enable to first volume {first_volume:.0?}");
    let out = run_rm(&mount, &["sh", "-c", "echo v1 > /data/f && cat /data/f"]);
    assert_eq!(out, "v1");
    // The data is on the export, where other hosts see it.
    assert_eq!(
        std::fs::read_to_string(root.join("volumes").join(&vol).join("data/f")).unwrap(),
        "v1\n"
    );
    let inspect = docker_ok(&["volume", "inspect", "-f", "{{.Status.created_by}}", &vol]);
    assert_eq!(inspect, "mp1");

    // In use by a container: Docker refuses to disable the plugin.
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &sleeper,
        "--network",
        "none",
        "-v",
        &mount,
        IMAGE,
        "sleep",
        "600",
    ]);
    let out = docker(&["plugin", "disable", &v1]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    docker_ok(&["rm", "-f", &sleeper]);

    // A rebuilt version, pushed to the registry, and the upgrade to it.
    build(&v2);
    docker_ok(&["plugin", "push", &v2]);
    docker_ok(&["plugin", "rm", "-f", &v2]);
    docker_ok(&["plugin", "disable", "-f", &v1]);
    docker_ok(&[
        "plugin",
        "upgrade",
        "--grant-all-permissions",
        "--skip-remote-check",
        &v1,
        &v2,
    ]);
    // dockerd 20.10 keeps the environment across an upgrade but takes the mounts from the
    // new config: the root's source is set again (docs/managed-plugin.md says so).
    let env = docker_ok(&["plugin", "inspect", "-f", "{{.Settings.Env}}", &v1]);
    assert!(env.contains("NODE=mp1"), "{env}");
    docker_ok(&["plugin", "set", &v1, &root_source]);
    docker_ok(&["plugin", "enable", &v1]);
    let listed = docker_ok(&["volume", "ls", "-q", "-f", &format!("driver={v1}")]);
    assert!(listed.lines().any(|l| l == vol), "{listed}");
    let out = run_rm(&mount, &["cat", "/data/f"]);
    assert_eq!(out, "v1", "the volume's data after the upgrade");
    let node = docker_ok(&["volume", "inspect", "-f", "{{.Status.created_by}}", &vol]);
    assert_eq!(node, "mp1");
    docker_ok(&["volume", "rm", &vol]);
    assert!(!root.join("volumes").join(&vol).exists());
}
