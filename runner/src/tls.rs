//! Which servers the runner trusts over `https://` / `wss://`: the Mozilla roots (webpki-roots,
//! compiled in, so no system store is needed) plus, with `--ca-cert`, the certificates of a PEM
//! file — for a server with a self-signed or private-CA certificate.
//!
//! It builds the HTTP client (token exchange, artifact uploads) and the WebSocket connector from
//! the same trust, so both links accept exactly the same servers. It never disables
//! verification: there is no "insecure" switch.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Extra trust anchors on top of the built-in roots.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    extra: Vec<CertificateDer<'static>>,
}

impl Trust {
    /// Reads every certificate in the PEM file at `ca_cert` (none: built-in roots only).
    pub fn load(ca_cert: Option<&Path>) -> Result<Self, String> {
        let Some(path) = ca_cert else {
            return Ok(Self::default());
        };
        let read = |e: rustls::pki_types::pem::Error| format!("--ca-cert {}: {e}", path.display());
        let extra = CertificateDer::pem_file_iter(path)
            .map_err(read)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        if extra.is_empty() {
            return Err(format!(
                "--ca-cert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                path.display()
            ));
        }
        Ok(Self { extra })
    }

    /// Adds the extra anchors to a reqwest client (which already has the built-in roots).
    pub fn http_client(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
        let mut builder = builder.use_rustls_tls();
        for cert in &self.extra {
            let cert = reqwest::Certificate::from_der(cert.as_ref())
                .map_err(|e| format!("CA certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        builder.build().map_err(|e| format!("HTTP client: {e}"))
    }

    /// The WebSocket connector (used for `wss://` only; `ws://` stays plain TCP).
    pub fn ws_connector(&self) -> Result<tokio_tungstenite::Connector, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &self.extra {
            roots
                .add(cert.clone())
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
    }
}
