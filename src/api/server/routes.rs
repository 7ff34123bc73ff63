//! The one warp filter for everything on the socket, dispatching on the path.
//!
//! One filter instead of one per route: dockerd sends `POST /VolumeDriver.<Method>` for
//! methods this version may not know and must get a JSON `Err` for them, never warp's
//! rejection; and both APIs need the same body handling (dockerd sends no Content-Type),
//! deadline ([`crate::runtime::deadline::serve`]: each call in its own task) and error shape. The
//! per-method routing lives in `plugin::handle` and `api::handle`.
//!
//! The plugin API is POST only, as dockerd always sends it: any other method is answered
//! 405, so that a `GET /VolumeDriver.Remove` from a browser-like client removes nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use warp::http::{Method, StatusCode};
use warp::Filter;

use super::Peer;
use crate::api::{control as api, plugin};
use crate::ops::service::Service;
use crate::runtime::deadline::serve;

/// One filter for everything on the socket; dispatch happens on the path. With
/// `plugin_only` (TCP), the control API is not served: the CLI uses the unix socket.
pub fn routes(
    svc: Arc<Service>,
    timeout: Duration,
    plugin_only: bool,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::ext::optional::<Peer>())
        .and(warp::body::bytes())
        .then(
            move |method: Method, path: warp::path::FullPath, peer: Option<Peer>, body: Bytes| {
                let svc = svc.clone();
                let peer = peer.unwrap_or_default();
                let path = path.as_str().to_string();
                async move {
                    if plugin_only && api::ApiPath::parse(&path).is_control() {
                        let msg = "the control API is served on the unix socket only";
                        return reply(StatusCode::NOT_FOUND, json!({ "Err": msg, "error": msg }));
                    }
                    dispatch(svc, timeout, method, path, peer, body).await
                }
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
    peer: Peer,
    body: Bytes,
) -> warp::reply::Response {
    // The plugin API is dockerd's (root), and everything that changes anything is root's;
    // others who may connect (--socket-group) can read. The check looks at the path as it
    // is routed (decoded once, see api::ApiPath), never at another spelling of it.
    let api_path = api::ApiPath::parse(&path);
    if !peer.may_change() && !api_path.reads_only(method.as_str()) {
        let who = peer
            .uid
            .map_or("an unknown user".to_string(), |u| format!("uid {u}"));
        let msg = format!(
            "permission denied: {method} {} changes volumes and needs root (the caller is {who}); other users may only read (caravan list, inspect, nodes, info)",
            crate::core::error::cut(&path)
        );
        return reply(StatusCode::FORBIDDEN, json!({ "Err": msg, "error": msg }));
    }
    let plugin_call = path == "/Plugin.Activate" || path.starts_with("/VolumeDriver.");
    if plugin_call && method != Method::POST {
        let msg = format!("{method} {path}: the plugin API takes POST only");
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, json!({ "Err": msg }));
        r.headers_mut().insert(
            warp::http::header::ALLOW,
            warp::http::HeaderValue::from_static("POST"),
        );
        return r;
    }
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
    if api_path.is_control() {
        let m = method.as_str().to_string();
        let (status, v) = serve(timeout, "control call", async move {
            api::handle(svc, &m, &api_path, &body).await
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

pub(super) fn reply(status: StatusCode, body: Value) -> warp::reply::Response {
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

/// The metrics endpoint's one route: `GET /metrics`, the Prometheus text format.
pub fn metrics_routes(
    svc: Arc<Service>,
    timeout: Duration,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    warp::method().and(warp::path::full()).then(
        move |method: Method, path: warp::path::FullPath| {
            let svc = svc.clone();
            async move {
                if method != Method::GET || path.as_str() != "/metrics" {
                    return reply(
                        StatusCode::NOT_FOUND,
                        json!({ "error": "this endpoint serves GET /metrics only" }),
                    );
                }
                let scraped = serve(timeout, "metrics scrape", async move {
                    let info = svc.info().await?;
                    let nodes = svc.nodes().await?;
                    Ok::<_, crate::core::error::Error>(super::scrape::render(
                        svc.metrics(),
                        &super::scrape::Scrape {
                            info: &info,
                            nodes: &nodes,
                        },
                    ))
                })
                .await;
                match scraped {
                    Ok(Ok(text)) => {
                        let mut r = warp::reply::Response::new(text.into());
                        r.headers_mut().insert(
                            warp::http::header::CONTENT_TYPE,
                            warp::http::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        r
                    }
                    Ok(Err(e)) | Err(e) => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({ "error": e.to_string() }),
                    ),
                }
            }
        },
    )
}
