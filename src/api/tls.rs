//! The plugin API over TCP with mutual TLS (`--listen tcp://ADDR:PORT`), for a dockerd
//! that reaches caravan through a `.json` spec (`Addr` and `TLSConfig`), with rustls
//! (ring; no OpenSSL).
//!
//! Client certificates are required: a client that presents none, or one that the client
//! CA (`--tls-client-ca`) did not sign, or that does not speak TLS at all, fails the
//! handshake and is logged; the connection never reaches HTTP. A client that passes is
//! trusted as dockerd is on the unix socket ([`crate::api::server::Peer`]). The handshake runs
//! in the connection's own task, within the header timeout, never in the accept loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::core::error::{Error, Result};

/// The server side: its certificate and key, and the CA its clients' certificates must
/// come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::invalid(format!(
                "{what} {}: {e}; give a PEM file of certificates",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "{what} {}: no certificate in it; give a PEM file with BEGIN CERTIFICATE blocks",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the TLS server configuration; every file is read and checked now, so that a
/// wrong path or a key that does not match fails the start with its name.
pub fn server_config(files: &ServerFiles) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        Error::invalid(format!(
            "--tls-key {}: {e}; give the PEM private key of --tls-cert",
            files.key.display()
        ))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&files.client_ca, "--tls-client-ca")? {
        roots.add(ca).map_err(|e| {
            Error::invalid(format!(
                "--tls-client-ca {}: {e}",
                files.client_ca.display()
            ))
        })?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::invalid(format!("--tls-client-ca: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            Error::invalid(format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    Ok(Arc::new(config))
}

/// A TCP listener whose connections complete a TLS handshake, client certificate
/// included, before they are served.
pub struct TlsListener {
    pub tcp: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}
