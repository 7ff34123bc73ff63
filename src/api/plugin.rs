//! Docker's VolumeDriver API, as dockerd 20.10 and later use it (docs/semantics.md says
//! what each call does across hosts; the rules below are the protocol's).
//!
//! Every answer is HTTP 200 with a JSON body, never an empty one; an error is
//! `{"Err": "message"}`, which dockerd shows to the user as `create web: message`, etc.
//! Requests carry no Content-Type, so bodies are parsed from raw bytes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core::error::{Error, Result};
use crate::core::volume::OptionMap;
use crate::ops::service::Service;

/// The plugin request body: a JSON object. Fields Docker does not send for a method stay
/// empty; unknown fields are ignored, as dockerd's own plugin helpers
/// (go-plugins-helpers) ignore them, so a newer dockerd's additions do not break calls. A
/// field or option given twice is refused.
#[derive(Debug, Default, Deserialize)]
pub struct Request {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Opts", default)]
    pub opts: Option<OptionMap>,
}

/// `/Plugin.Activate`: needs no state, and may never be called in this process's lifetime
/// (dockerd does not re-activate a plugin that restarted).
pub fn activate() -> Value {
    json!({ "Implements": ["VolumeDriver"] })
}

/// Handles one `/VolumeDriver.<method>` call and logs one line for it. Returns the JSON
/// body of the answer.
pub async fn handle(svc: Arc<Service>, method: &str, body: &[u8]) -> Bytes {
    let started = Instant::now();
    let req = parse(method, body);
    let volume = req.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let result = match req {
        Ok(_) if method == "List" => list(&svc).await,
        Ok(req) => dispatch(&svc, method, req).await.map(|v| to_body(&v)),
        Err(e) => Err(e),
    };
    let took = started.elapsed();
    let ms = took.as_secs_f64() * 1e3;
    let node = svc.node();
    let volume = crate::core::error::cut(&volume).into_owned();
    let count = |outcome| {
        svc.metrics()
            .call("plugin", known_method(method), outcome, took)
    };
    match result {
        Ok(v) => {
            count("ok");
            tracing::info!(target: "caravan::call", method, volume, node, ms = format_args!("{ms:.2}"), outcome = "ok");
            v
        }
        // dockerd asks Get before every create: "no such volume" is an answer, not a problem.
        Err(e @ Error::NoSuchVolume(_)) if method == "Get" => {
            count("not_found");
            tracing::info!(target: "caravan::call", method, volume, node, ms = format_args!("{ms:.2}"), outcome = "not found");
            to_body(&json!({ "Err": e.to_string() }))
        }
        Err(e) => {
            count("error");
            tracing::warn!(target: "caravan::call", method, volume, node, ms = format_args!("{ms:.2}"), outcome = "error", error = %e);
            to_body(&json!({ "Err": e.to_string() }))
        }
    }
}

/// The method as a metrics label: one of the protocol's, or `other`.
fn known_method(method: &str) -> &'static str {
    const METHODS: [&str; 8] = [
        "Create",
        "Remove",
        "Mount",
        "Unmount",
        "Path",
        "Get",
        "List",
        "Capabilities",
    ];
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

fn to_body(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("JSON values serialize"))
}

/// `List`: every volume's name and mountpoint, rendered once per metadata generation.
async fn list(svc: &Service) -> Result<Bytes> {
    svc.list_rendered(|names| {
        let volumes: Vec<Value> = names
            .map(|(name, mp)| json!({ "Name": name, "Mountpoint": mp }))
            .collect();
        to_body(&json!({ "Volumes": volumes, "Err": "" }))
    })
    .await
}

/// Decodes the body of `/VolumeDriver.<method>` (pure, so that it can be fuzzed).
pub fn parse(method: &str, body: &[u8]) -> Result<Request> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        // List and Capabilities carry no fields; for the others an empty body is a resend
        // after a partial write, which must get an error, not a guess.
        return match method {
            "List" | "Capabilities" => Ok(Request::default()),
            _ => Err(Error::invalid(format!(
                "empty request body for VolumeDriver.{method}: expected a JSON object with Name"
            ))),
        };
    }
    let bad = |why: String| {
        Error::invalid(format!(
            "invalid request body for VolumeDriver.{method}: {why}; expected a JSON object like {{\"Name\":\"vol\"}}"
        ))
    };
    // serde would take an array as the struct's fields by position.
    if !trimmed.starts_with(b"{") {
        return Err(bad("not a JSON object".into()));
    }
    let req: Request = serde_json::from_slice(trimmed).map_err(|e| bad(e.to_string()))?;
    let named = matches!(
        method,
        "Create" | "Remove" | "Mount" | "Unmount" | "Path" | "Get"
    );
    if req.name.is_empty() && named {
        return Err(Error::invalid(format!(
            "Name is required for VolumeDriver.{method}: expected a JSON object like {{\"Name\":\"vol\"}}"
        )));
    }
    Ok(req)
}

async fn dispatch(svc: &Arc<Service>, method: &str, req: Request) -> Result<Value> {
    match method {
        "Create" => {
            let options = req.opts.unwrap_or_default().options()?;
            svc.create(&req.name, options).await?;
            Ok(json!({ "Err": "" }))
        }
        "Remove" => {
            svc.remove(&req.name).await?;
            Ok(json!({ "Err": "" }))
        }
        "Mount" => {
            let path = svc.mount(&req.name, &req.id).await?;
            Ok(json!({ "Mountpoint": path, "Err": "" }))
        }
        "Unmount" => {
            svc.unmount(&req.name, &req.id).await?;
            Ok(json!({ "Err": "" }))
        }
        "Path" => {
            let path = svc.path(&req.name).await?;
            Ok(json!({ "Mountpoint": path, "Err": "" }))
        }
        "Get" => {
            // Any error in Get makes dockerd forget the volume (and its labels). `get`
            // answers from the last known metadata (marked stale) when the export does
            // not answer, so an error here means the volume really does not exist (or
            // nothing was ever loaded).
            let view = svc.get(&req.name).await?;
            let mut status = serde_json::to_value(&view).expect("views serialize");
            if let Value::Object(m) = &mut status {
                m.remove("name");
                m.remove("mountpoint");
            }
            Ok(json!({
                "Volume": {
                    "Name": view.name,
                    "Mountpoint": view.mountpoint,
                    "CreatedAt": view.created_at,
                    "Status": status,
                },
                "Err": "",
            }))
        }
        "Capabilities" => Ok(json!({ "Capabilities": { "Scope": "global" } })),
        other => Err(Error::invalid(format!(
            "unknown method VolumeDriver.{other}: caravan implements Create, Remove, Mount, Unmount, Path, Get, List, Capabilities"
        ))),
    }
}
