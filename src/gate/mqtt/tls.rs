//! The fleet output's TLS to the broker: rustls (ring, TLS 1.3, as the TCP gate's link), trusting only the
//! configured CA, with the device's client certificate when the board has one. Loaded once at start, so that
//! a bad file is a start-up error naming its key.

use anyhow::{anyhow, ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The board's TLS files for the broker, paths resolved.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA (PEM) that must have issued the broker's certificate.
    pub ca: PathBuf,
    /// The device's certificate chain and private key (PEM, key mode 600), for client authentication.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| anyhow!("reading {what} {}: {error}", path.display()))?;
    ensure!(!certificates.is_empty(), "{what} {} holds no PEM certificate", path.display());
    Ok(certificates)
}

/// A TLS 1.3 client that trusts only `files.ca` and presents the device's certificate if there is one.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(&files.ca, "mqtt.ca")? {
        roots
            .add(certificate)
            .with_context(|| format!("mqtt.ca {}: not a usable CA certificate", files.ca.display()))?;
    }
    // ring, as for the TCP gate (src/gate/tcp/link.rs says why).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_root_certificates(roots);
    let config = match &files.identity {
        Some((certificate, key)) => {
            let chain = certificates(certificate, "mqtt.certificate")?;
            let key_text = crate::gate::read_private_file(key, "mqtt.private_key")?;
            let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|error| {
                anyhow!("mqtt.private_key {}: no usable PEM private key: {error}", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .context("mqtt.certificate and mqtt.private_key do not make a usable client identity")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
