//! A small HTTP/1.1 client for the daemon's unix socket (hyper, one connection per call).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// Why a call to the daemon failed, worded for the person running the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the caravan daemon is not running (nothing listens on {0}); start it with `caravan daemon` or `systemctl start caravan`, or pass --socket")]
    NotRunning(PathBuf),
    #[error(
        "permission denied on {0}: the daemon's socket is root's (or its --socket-group's); run this command as root, or as a member of that group to read"
    )]
    PermissionDenied(PathBuf),
    #[error("the daemon did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("talking to the daemon on {socket}: {message}")]
    Transport { socket: PathBuf, message: String },
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(String),
}

/// A client for one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Client {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the status and the decoded JSON body. Plugin-style
    /// calls (`POST /VolumeDriver.X`) are sent as dockerd sends them: no Content-Type.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// Like [`Client::call`], but a non-2xx answer becomes [`ClientError::Api`] with the
    /// daemon's message.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, v) = self.call(method, path, body).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            let msg = v
                .get("error")
                .or_else(|| v.get("Err"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("the daemon answered HTTP {status}: {v}"));
            Err(ClientError::Api(msg))
        }
    }

    async fn call_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(self.socket.clone())
                }
                std::io::ErrorKind::PermissionDenied => {
                    ClientError::PermissionDenied(self.socket.clone())
                }
                _ => self.transport(e),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.transport(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = body.map(|b| format!("{b}\n")).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "caravan")
            .header("Accept", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| self.transport(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        let v = serde_json::from_slice(&bytes)
            .map_err(|e| self.transport(format!("the answer is not JSON ({e})")))?;
        Ok((status, v))
    }

    fn transport(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            socket: self.socket.clone(),
            message: e.to_string(),
        }
    }
}
