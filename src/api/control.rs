//! The daemon's control API, used by the `caravan` CLI. It is served on the same unix
//! socket as the plugin API, under `/v1/`:
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /v1/info` | | [`Info`](crate::ops::service::Info) |
//! | `GET /v1/health` | | [`HealthReport`](crate::export::health::HealthReport) (never touches the export) |
//! | `GET /v1/volumes` | | list of [`VolumeView`](crate::ops::service::VolumeView) |
//! | `GET /v1/nodes` | | list of [`NodeInfo`](crate::ops::service::NodeInfo) |
//! | `POST /v1/volumes` | `{"name": "web", "options": {"size": "1G"}}` | the created volume |
//! | `GET /v1/volumes/NAME` | | the volume, with usage |
//! | `DELETE /v1/volumes/NAME` | | `{}` |
//! | `POST /v1/volumes/NAME/mount` | `{"id": "caravan-cli"}` | `{"mountpoint": "/…"}` |
//! | `POST /v1/volumes/NAME/unmount` | `{"id": "caravan-cli"}` | `{}` |
//! | `POST /v1/volumes/NAME/takeover` | `{"force": false}` | the volume, held by this node |
//! | `GET /v1/doctor` | | [`DoctorReport`](crate::ops::service::DoctorReport): what does not agree |
//! | `POST /v1/doctor/repair` | | the same, with the safe repairs made |
//! | `POST /v1/backups` | `{"source": "web" \| "web@snap", "dest": "vfs:///srv/b"}` | 202, a [`BackupJobView`](crate::ops::service::BackupJobView) |
//! | `POST /v1/backups/list` | `{"dest": URL, "volume": "web"}` (volume optional) | list of [`BackupView`](crate::ops::service::BackupView) |
//! | `POST /v1/backups/inspect` | `{"url": BACKUP_URL}` | a [`BackupView`](crate::ops::service::BackupView) |
//! | `POST /v1/backups/verify`, `POST /v1/backups/delete` | `{"url": BACKUP_URL}` | 202, a job |
//! | `GET`, `DELETE /v1/backup-jobs/ID` | | the job; `DELETE` stops it |
//!
//! Errors answer a 4xx or 5xx status with `{"error": "message"}`.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::core::error::{Error, Result};
use crate::core::volume::OptionMap;
use crate::ops::service::Service;

/// Body of `POST /v1/volumes`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    #[serde(default)]
    pub options: OptionMap,
}

/// Body of the mount and unmount requests.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    pub id: String,
}

/// Body of `POST /v1/volumes/NAME/takeover`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeoverRequest {
    #[serde(default)]
    pub force: bool,
}

/// Body of `POST /v1/volumes/NAME/snapshots`: the snapshot's name, or none for a
/// generated one.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    #[serde(default)]
    pub name: Option<String>,
}

/// Body of `POST /v1/backups`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    pub source: String,
    pub dest: String,
}

/// Body of `POST /v1/backups/list`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupListRequest {
    pub dest: String,
    #[serde(default)]
    pub volume: Option<String>,
}

/// Body of the requests about one backup.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupUrlRequest {
    pub url: String,
}

/// Handles one control request; returns the HTTP status and the JSON body.
pub async fn handle(svc: Arc<Service>, method: &str, path: &ApiPath, body: &[u8]) -> (u16, Value) {
    let started = Instant::now();
    let result = route(&svc, method, path, body).await;
    let took = started.elapsed();
    let ms = took.as_secs_f64() * 1e3;
    let node = svc.node();
    let name = route_name(method, path);
    let path = &path.raw;
    let path = crate::core::error::cut(path);
    match result {
        Ok((status, v)) => {
            svc.metrics().call("control", name, "ok", took);
            tracing::info!(target: "caravan::call", method, path = %path, node, ms = format_args!("{ms:.2}"), outcome = "ok");
            (status, v)
        }
        Err(e) => {
            let outcome = if e.status() == 404 {
                "not_found"
            } else {
                "error"
            };
            svc.metrics().call("control", name, outcome, took);
            tracing::warn!(target: "caravan::call", method, path = %path, node, ms = format_args!("{ms:.2}"), outcome = "error", error = %e);
            (e.status(), json!({ "error": e.to_string() }))
        }
    }
}

/// A control API path as routed: its segments, each percent-decoded once, here and
/// nowhere else. The permission check and the routing both look at these, so that no
/// spelling of a path (`/v1/%64octor`) is routed where the check did not look.
#[derive(Debug)]
pub struct ApiPath {
    /// The path as sent (for messages and logs).
    pub raw: String,
    parts: Vec<String>,
}

impl ApiPath {
    /// Every segment counts, an empty one too: `/v1/volumes/` (a name of "") must reach
    /// name validation, not be taken for the list.
    pub fn parse(raw: &str) -> ApiPath {
        ApiPath {
            raw: raw.to_string(),
            parts: raw
                .strip_prefix('/')
                .unwrap_or(raw)
                .split('/')
                .map(percent_decode)
                .collect(),
        }
    }

    fn parts(&self) -> Vec<&str> {
        self.parts.iter().map(String::as_str).collect()
    }

    /// Whether the path is the control API's (`/v1/...`).
    pub fn is_control(&self) -> bool {
        self.parts.first().is_some_and(|p| p == "v1")
    }

    /// Whether `method` on this path only reads: what others than root may call (see
    /// `server::routes`). Doctor reads the whole export: root's, like the changes, so that
    /// nobody else can pile such walks onto a slow export.
    pub fn reads_only(&self, method: &str) -> bool {
        method == "GET" && self.is_control() && route_name(method, self) != "doctor"
    }
}

/// The route as a metrics label (a fixed set, whatever the path holds).
fn route_name(method: &str, path: &ApiPath) -> &'static str {
    match (method, path.parts().as_slice()) {
        ("GET", ["v1", "info"]) => "info",
        ("GET", ["v1", "health"]) => "health",
        ("GET", ["v1", "volumes"]) => "list",
        ("GET", ["v1", "nodes"]) => "nodes",
        ("GET", ["v1", "doctor"]) => "doctor",
        ("POST", ["v1", "doctor", "repair"]) => "doctor_repair",
        ("POST", ["v1", "volumes"]) => "create",
        ("GET", ["v1", "volumes", _]) => "inspect",
        ("DELETE", ["v1", "volumes", _]) => "delete",
        ("POST", ["v1", "volumes", _, "mount"]) => "mount",
        ("POST", ["v1", "volumes", _, "unmount"]) => "unmount",
        ("POST", ["v1", "volumes", _, "takeover"]) => "takeover",
        ("GET", ["v1", "snapshots"]) | ("GET", ["v1", "volumes", _, "snapshots"]) => {
            "snapshot_list"
        }
        ("POST", ["v1", "volumes", _, "snapshots"]) => "snapshot_create",
        ("GET", ["v1", "volumes", _, "snapshots", _]) => "snapshot_inspect",
        ("DELETE", ["v1", "volumes", _, "snapshots", _]) => "snapshot_delete",
        ("POST", ["v1", "backups"]) => "backup_create",
        ("POST", ["v1", "backups", "list"]) => "backup_list",
        ("POST", ["v1", "backups", "inspect"]) => "backup_inspect",
        ("POST", ["v1", "backups", "verify"]) => "backup_verify",
        ("POST", ["v1", "backups", "delete"]) => "backup_delete",
        (_, ["v1", "backup-jobs", _]) => "backup_job",
        _ => "other",
    }
}

async fn route(
    svc: &Arc<Service>,
    method: &str,
    path: &ApiPath,
    body: &[u8],
) -> Result<(u16, Value)> {
    let parts = path.parts();
    let ok = |v: Value| Ok((200, v));
    match (method, parts.as_slice()) {
        ("GET", ["v1", "info"]) => ok(to_json(&svc.info().await?)),
        ("GET", ["v1", "health"]) => ok(to_json(&svc.health())),
        ("GET", ["v1", "volumes"]) => ok(to_json(&svc.list().await?)),
        ("GET", ["v1", "nodes"]) => ok(to_json(&svc.nodes().await?)),
        ("GET", ["v1", "doctor"]) => ok(to_json(&svc.doctor(false).await?)),
        ("POST", ["v1", "doctor", "repair"]) => ok(to_json(&svc.doctor(true).await?)),
        ("POST", ["v1", "volumes"]) => {
            let req: CreateRequest = parse_body(body)?;
            let options = req.options.options()?;
            // 201 only for a volume this call made; an existing one with the same
            // options is answered 200, as Docker's own API does.
            let (view, existed) = svc.create(&req.name, options).await?;
            Ok((if existed { 200 } else { 201 }, to_json(&view)))
        }
        ("POST", ["v1", "copies"]) => {
            let req: CreateRequest = parse_body(body)?;
            let options = req.options.options()?;
            Ok((202, to_json(&svc.copy_start(&req.name, options).await?)))
        }
        ("GET", ["v1", "copies", name]) => ok(to_json(&svc.copy_get(name)?)),
        ("DELETE", ["v1", "copies", name]) => ok(to_json(&svc.copy_stop(name)?)),
        ("GET", ["v1", "volumes", name]) => ok(to_json(&svc.inspect(name).await?)),
        ("DELETE", ["v1", "volumes", name]) => {
            svc.remove(name).await?;
            ok(json!({}))
        }
        ("POST", ["v1", "volumes", name, "mount"]) => {
            let req: MountRequest = parse_body(body)?;
            let path = svc.mount(name, &req.id).await?;
            ok(json!({ "mountpoint": path }))
        }
        ("POST", ["v1", "volumes", name, "takeover"]) => {
            let req: TakeoverRequest = if body.trim_ascii().is_empty() {
                TakeoverRequest { force: false }
            } else {
                parse_body(body)?
            };
            ok(to_json(&svc.takeover(name, req.force).await?))
        }
        ("POST", ["v1", "volumes", name, "unmount"]) => {
            let req: MountRequest = parse_body(body)?;
            svc.unmount(name, &req.id).await?;
            ok(json!({}))
        }
        ("GET", ["v1", "snapshots"]) => ok(to_json(&svc.snapshot_list(None).await?)),
        ("GET", ["v1", "volumes", name, "snapshots"]) => {
            ok(to_json(&svc.snapshot_list(Some(name)).await?))
        }
        ("POST", ["v1", "volumes", name, "snapshots"]) => {
            let req: SnapshotRequest = parse_body(body)?;
            let view = svc.snapshot_create(name, req.name.as_deref()).await?;
            Ok((202, to_json(&view)))
        }
        ("GET", ["v1", "volumes", name, "snapshots", snap]) => {
            ok(to_json(&svc.snapshot_get(name, snap).await?))
        }
        ("DELETE", ["v1", "volumes", name, "snapshots", snap]) => {
            Ok((202, to_json(&svc.snapshot_delete(name, snap).await?)))
        }
        ("POST", ["v1", "backups"]) => {
            let req: BackupRequest = parse_body(body)?;
            Ok((
                202,
                to_json(&svc.backup_start(&req.source, &req.dest).await?),
            ))
        }
        ("POST", ["v1", "backups", "list"]) => {
            let req: BackupListRequest = parse_body(body)?;
            ok(to_json(
                &svc.backup_list(&req.dest, req.volume.as_deref()).await?,
            ))
        }
        ("POST", ["v1", "backups", "inspect"]) => {
            let req: BackupUrlRequest = parse_body(body)?;
            ok(to_json(&svc.backup_inspect(&req.url).await?))
        }
        ("POST", ["v1", "backups", "verify"]) => {
            let req: BackupUrlRequest = parse_body(body)?;
            Ok((202, to_json(&svc.backup_verify(&req.url)?)))
        }
        ("POST", ["v1", "backups", "delete"]) => {
            let req: BackupUrlRequest = parse_body(body)?;
            Ok((202, to_json(&svc.backup_delete(&req.url)?)))
        }
        ("GET", ["v1", "backup-jobs", id]) => ok(to_json(&svc.backup_job(id)?)),
        ("DELETE", ["v1", "backup-jobs", id]) => ok(to_json(&svc.backup_job_stop(id)?)),
        _ => Err(Error::NoSuchEndpoint(format!(
            "{method} {}",
            crate::core::error::cut(&path.raw)
        ))),
    }
}

/// Decodes `%XX` escapes in one path segment (the CLI escapes what a name cannot hold,
/// so that a bad name reaches validation whole and is refused by name).
fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("API types serialize")
}

/// Decodes a control request body: a JSON object of the request's type (pure, so that it
/// can be fuzzed).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if !body.trim_ascii().starts_with(b"{") {
        return Err(Error::invalid(
            "invalid request body: expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| Error::invalid(format!("invalid request body: {e}")))
}
