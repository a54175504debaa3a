//! The TCP gate's link to the controller: TLS 1.3 with mutual authentication (rustls; the device's certificate
//! and key, the controller's CA and name pinned), or plaintext where the board says `insecure = true` (a lab).
//! A controller that fails any check (another CA, an expired certificate, another name, no TLS at all) is
//! refused before a single verdict goes out; `TlsRefused` marks that error so the thread counts and reports it.

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long the TLS handshake may take before the controller is given up on for this attempt.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The board's TLS files and the controller's pinned name, paths resolved.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The device's certificate chain (PEM), presented to the controller.
    pub certificate: PathBuf,
    /// The device's private key (PEM, PKCS#8, SEC1 or PKCS#1), mode 600.
    pub private_key: PathBuf,
    /// The CA (PEM) that must have issued the controller's certificate; the only one trusted.
    pub controller_ca: PathBuf,
    /// The name the controller's certificate must carry (DNS name or IP address).
    pub controller_name: String,
}

/// The client side of the link, loaded once at start: a bad file is a start-up error naming it.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Tls({:?})", self.name)
    }
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| anyhow!("reading {what} {}: {error}", path.display()))?;
    anyhow::ensure!(!certificates.is_empty(), "{what} {} holds no PEM certificate", path.display());
    Ok(certificates)
}

impl Tls {
    /// Reads the certificates and the key (which must be private to the runtime's user) and builds a TLS 1.3
    /// client that trusts only `controller_ca` and presents the device's certificate.
    pub fn load(settings: &TlsSettings) -> Result<Tls> {
        let chain = certificates(&settings.certificate, "gate.certificate")?;
        let key_text = crate::gate::read_private_file(&settings.private_key, "gate.private_key")?;
        let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|error| {
            anyhow!("gate.private_key {}: no usable PEM private key: {error}", settings.private_key.display())
        })?;
        let mut roots = RootCertStore::empty();
        for certificate in certificates(&settings.controller_ca, "gate.controller_ca")? {
            roots.add(certificate).with_context(|| {
                format!(
                    "gate.controller_ca {}: not a usable CA certificate",
                    settings.controller_ca.display()
                )
            })?;
        }
        let name = ServerName::try_from(settings.controller_name.clone()).map_err(|error| {
            anyhow!(
                "gate.controller_name `{}` is not a DNS name or IP address: {error}",
                settings.controller_name
            )
        })?;
        // ring, not aws-lc-rs: it builds for the Jetson with the C compiler alone. Deprecated in rustls only for
        // lacking post-quantum key exchange; the link is between two devices of one site.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("gate.certificate and gate.private_key do not make a usable client identity")?;
        Ok(Tls { config: Arc::new(config), name })
    }
}

/// The TLS handshake with the controller failed: it is not the pinned controller, or speaks no TLS.
#[derive(Debug)]
pub(super) struct TlsRefused(pub(super) String);

impl std::fmt::Display for TlsRefused {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "controller refused (TLS): {}", self.0)
    }
}

impl std::error::Error for TlsRefused {}

/// One connection to the controller, plaintext or TLS.
pub(super) enum Link {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Link {
    /// The TCP socket under the link (time-outs, non-blocking reads).
    pub(super) fn socket(&self) -> &TcpStream {
        match self {
            Link::Plain(stream) => stream,
            Link::Tls(stream) => stream.get_ref(),
        }
    }

    /// `stream` as it is (`tls` is `None`: `insecure = true`), or after a completed TLS handshake that
    /// authenticated the controller; a failed handshake is a `TlsRefused` error.
    pub(super) fn open(mut stream: TcpStream, tls: Option<&Tls>) -> Result<Link> {
        let Some(tls) = tls else { return Ok(Link::Plain(stream)) };
        let mut connection = ClientConnection::new(Arc::clone(&tls.config), tls.name.clone())
            .map_err(|error| TlsRefused(error.to_string()))?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).context("setting the handshake time-out")?;
        while connection.is_handshaking() {
            if let Err(error) = connection.complete_io(&mut stream) {
                return Err(TlsRefused(error.to_string()).into());
            }
        }
        // TLS 1.3: the server's verdict on our certificate can arrive after our side considers the handshake
        // done; a controller that refuses the device closes with an alert that the first read then reports.
        stream.set_read_timeout(None).context("clearing the handshake time-out")?;
        Ok(Link::Tls(Box::new(StreamOwned::new(connection, stream))))
    }
}

impl Read for Link {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(stream) => stream.read(buffer),
            Link::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for Link {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(stream) => stream.write(bytes),
            Link::Tls(stream) => stream.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Plain(stream) => stream.flush(),
            Link::Tls(stream) => stream.flush(),
        }
    }
}
