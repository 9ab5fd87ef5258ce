//! TLS: the certificate (from the configuration, or self-signed and generated on first start)
//! and a rustls configuration that speaks TLS 1.3 and 1.2 only.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::state::StateDir;

/// File name of the generated certificate in the state directory.
pub const GENERATED_CERT: &str = "tls-cert.pem";
/// File name of the generated key in the state directory.
pub const GENERATED_KEY: &str = "tls-key.pem";

/// The certificate chain and key in PEM, loaded or generated.
pub struct CertificateFiles {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

/// Loads the configured certificate, or the one generated earlier, or generates a self-signed
/// one valid for `localhost`, the listen address and `tls.hostnames`.
pub fn load_or_generate(
    config: &TlsConfig,
    state: &StateDir,
    listen: SocketAddr,
) -> Result<CertificateFiles> {
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        return Ok(CertificateFiles {
            cert_pem: std::fs::read(cert)
                .map_err(|e| Error::io("cannot read certificate", cert, e))?,
            key_pem: std::fs::read(key).map_err(|e| Error::io("cannot read key", key, e))?,
        });
    }
    let cert_path = state.path(GENERATED_CERT);
    let key_path = state.path(GENERATED_KEY);
    if cert_path.exists() && key_path.exists() {
        return Ok(CertificateFiles {
            cert_pem: std::fs::read(&cert_path)
                .map_err(|e| Error::io("cannot read certificate", &cert_path, e))?,
            key_pem: std::fs::read(&key_path)
                .map_err(|e| Error::io("cannot read key", &key_path, e))?,
        });
    }
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(config.hostnames.iter().cloned());
    names.dedup();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Tls(format!("cannot generate a self-signed certificate: {e}")))?;
    let files = CertificateFiles {
        cert_pem: generated.cert.pem().into_bytes(),
        key_pem: generated.signing_key.serialize_pem().into_bytes(),
    };
    // Key first: a certificate without its key would be useless on the next start.
    let _ = std::fs::remove_file(&key_path);
    state.write_new(GENERATED_KEY, &files.key_pem)?;
    state.replace(GENERATED_CERT, &files.cert_pem)?;
    tracing::info!(path = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok(files)
}

/// A rustls server configuration: TLS 1.3 and 1.2 only (rustls implements nothing older),
/// HTTP/1.1 by ALPN.
pub fn server_config(files: &CertificateFiles) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("cannot parse the certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem)
        .map_err(|e| Error::Tls(format!("cannot parse the private key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
