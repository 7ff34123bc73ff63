//! The daemon's socket and its HTTP glue: one listener serves both Docker's plugin API
//! (`/Plugin.Activate`, `/VolumeDriver.*`, see [`crate::plugin`]) and the control API the
//! CLI uses (`/v1/...`, see [`crate::api`]), each call in its own task with the call
//! deadline ([`crate::deadline::serve`]).
//!
//! One filter takes every request and dispatches on the path, instead of one warp filter
//! per route: dockerd sends `POST /VolumeDriver.<Method>` for methods this version may not
//! know and must get a JSON `Err` for them, never warp's rejection; and both APIs need
//! the same body handling (dockerd sends no Content-Type), deadline and error shape. The
//! per-method routing lives in `plugin::handle` and `api::handle`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::UnixListener;
use warp::http::{Method, StatusCode};
use warp::Filter;

use crate::deadline::serve;
use crate::error::{Error, IoContext, Result};
use crate::service::Service;
use crate::{api, plugin};

/// Binds the unix socket, refusing to steal it from a running daemon and replacing a stale
/// file left by one that died.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    check_socket_path(path)?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .ctx(|| format!("creating {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        // check_socket_path made sure it is a socket that nobody serves.
        std::fs::remove_file(path)
            .ctx(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).ctx(|| format!("binding {}", path.display()))?;
    // Root only: the API can mount and delete volumes.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .ctx(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Checks `--socket` before anything is started or deleted: an absolute path short enough
/// for a unix socket, and where something is already there, a socket that no daemon
/// serves (a stale one, which [`bind_socket`] replaces). Anything else is refused and left
/// alone.
pub fn check_socket_path(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    // sun_path holds 108 bytes with the terminating NUL.
    const MAX: usize = 107;
    let bytes = path.as_os_str().as_bytes().len();
    if !path.is_absolute() || bytes > MAX || path.file_name().is_none() {
        return Err(Error::invalid(format!(
            "invalid --socket {}: use an absolute path of at most {MAX} bytes ending in a file name, for example /run/caravan/caravan.sock",
            path.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("inspecting {}", path.display()), e)),
        Ok(m) if !m.file_type().is_socket() => Err(Error::invalid(format!(
            "--socket {} exists and is not a socket; refusing to replace it: remove it or pass another --socket",
            path.display()
        ))),
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            Err(Error::invalid(format!(
                "another caravan daemon is already serving {}; stop it first or pass another --socket",
                path.display()
            )))
        }
        Ok(_) => Ok(()),
    }
}

/// One filter for everything on the socket; dispatch happens on the path.
pub fn routes(
    svc: Arc<Service>,
    timeout: Duration,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::body::bytes())
        .then(
            move |method: Method, path: warp::path::FullPath, body: Bytes| {
                let svc = svc.clone();
                async move { dispatch(svc, timeout, method, path.as_str().to_string(), body).await }
            },
        )
        .recover(|_rejection: warp::Rejection| async move {
            // Only reachable when the body cannot be read.
            Ok::<_, std::convert::Infallible>(reply(
                StatusCode::BAD_REQUEST,
                json!({ "Err": "could not read the request body" }),
            ))
        })
        .unify()
}

async fn dispatch(
    svc: Arc<Service>,
    timeout: Duration,
    method: Method,
    path: String,
    body: Bytes,
) -> warp::reply::Response {
    if path == "/Plugin.Activate" {
        return reply(StatusCode::OK, plugin::activate());
    }
    if let Some(m) = path.strip_prefix("/VolumeDriver.") {
        let m = m.to_string();
        let answer = serve(timeout, "VolumeDriver call", async move {
            plugin::handle(svc, &m, &body).await
        })
        .await;
        return match answer {
            Ok(body) => reply_body(body),
            Err(e) => reply(StatusCode::OK, json!({ "Err": e.to_string() })),
        };
    }
    if path.starts_with("/v1/") {
        let m = method.as_str().to_string();
        let (status, v) = serve(timeout, "control call", async move {
            api::handle(svc, &m, &path, &body).await
        })
        .await
        .unwrap_or_else(|e| (e.status(), json!({ "error": e.to_string() })));
        return reply(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            v,
        );
    }
    reply(
        StatusCode::NOT_FOUND,
        json!({ "Err": format!("no such endpoint {path}"), "error": format!("no such endpoint {path}") }),
    )
}

fn reply(status: StatusCode, body: Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// A plugin answer already rendered to JSON; plugin answers are always HTTP 200.
fn reply_body(body: Bytes) -> warp::reply::Response {
    let mut r = warp::reply::Response::new(body.into());
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    r
}
