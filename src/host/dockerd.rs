//! Telling the local dockerd that this driver exists.
//!
//! dockerd learns of a legacy (spec-file) volume plugin only when something first asks for
//! it, and what it reports to Swarm as this node's volume plugins is the list it has
//! learned so far. Until then the Swarm scheduler refuses this node for any task whose
//! mount names the driver ("missing plugin on N nodes"), although the spec is in place.
//! So once the daemon serves, it asks dockerd for the volumes of its own driver (`GET
//! /volumes` with a driver filter), which makes dockerd activate every plugin in its spec
//! folders and remember them. It asks again whenever dockerd's socket is a new one (dockerd
//! restarted and forgot). A Swarm agent reports a changed node description within 20 s
//! (swarmkit's node update period), and at once when it starts after the ask: see
//! docs/swarm.md.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::client::Client;

/// How often dockerd's socket is looked at (a `stat`; nothing is sent unless it changed):
/// often, so that the ask comes before an operator's `docker swarm join` would.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// dockerd activates every plugin in its spec folders on that call, and waits up to 15 s
/// for each one that does not answer: give it time.
const ASK_TIMEOUT: Duration = Duration::from_secs(60);

/// Which socket file, as (device, inode): a restarted dockerd makes a new one.
fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    use std::os::unix::fs::FileTypeExt;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

/// The request: this driver's volumes only, so dockerd asks no other plugin for its list
/// (it still activates them all, which is what makes it remember this one).
pub fn list_path(driver: &str) -> String {
    format!(
        "/volumes?filters={}",
        encode_filters(&serde_json::json!({ "driver": [driver] }))
    )
}

/// The running containers that use the volume `name` (for naming the container that
/// holds an exclusive volume): `GET /containers/json` with a volume filter. `None` when
/// dockerd does not answer within `timeout`.
pub async fn containers_using(socket: &Path, name: &str, timeout: Duration) -> Option<Vec<String>> {
    let path = format!(
        "/containers/json?filters={}",
        encode_filters(&serde_json::json!({ "volume": [name] }))
    );
    let answer = Client::new(socket, timeout)
        .request("GET", &path, None)
        .await;
    let list = match answer {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(docker = %socket.display(), "asking dockerd which container uses {name}: {e}");
            return None;
        }
    };
    // Bounded: names of at most 16 containers, each as dockerd gives it ("/name").
    Some(
        list.as_array()?
            .iter()
            .filter_map(|c| c.get("Names")?.get(0)?.as_str())
            .map(|n| n.trim_start_matches('/').chars().take(128).collect())
            .take(16)
            .collect(),
    )
}

/// A `filters` query value: the JSON, percent-encoded.
fn encode_filters(filters: &serde_json::Value) -> String {
    let filters = filters.to_string();
    let mut encoded = String::with_capacity(filters.len() * 3);
    for b in filters.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}

/// Watches `socket` for as long as the daemon runs, asking each dockerd that appears there
/// once. Never fails: without a dockerd there is nothing to tell.
pub async fn announce(socket: PathBuf, driver: String) {
    let client = Client::new(&socket, ASK_TIMEOUT);
    let path = list_path(&driver);
    let mut told: Option<(u64, u64)> = None;
    let mut failures = 0u32;
    loop {
        let now = socket_identity(&socket);
        if now.is_some() && now != told {
            match client.request("GET", &path, None).await {
                Ok(_) => {
                    tracing::info!(docker = %socket.display(), driver = %driver, "dockerd now lists this volume driver (a Swarm node reports it to its managers within 20 s)");
                    told = now;
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(docker = %socket.display(), "could not tell dockerd about this driver ({e}); Swarm may call this node \"missing plugin\" until the driver is first used here; retrying");
                    } else {
                        tracing::debug!(docker = %socket.display(), failures, "telling dockerd about this driver: {e}");
                    }
                    // Back off up to a minute while dockerd is starting or stuck.
                    let wait = WATCH_EVERY.saturating_mul(failures.min(120));
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_percent_encoded_json() {
        assert_eq!(
            list_path("caravan"),
            "/volumes?filters=%7B%22driver%22%3A%5B%22caravan%22%5D%7D"
        );
    }

    #[test]
    fn only_a_socket_has_an_identity() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert_eq!(socket_identity(&file), None);
        assert_eq!(socket_identity(&d.path().join("none")), None);
        let sock = d.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(socket_identity(&sock).is_some());
    }
}
