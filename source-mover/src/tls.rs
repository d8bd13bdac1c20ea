//! TLS to the repository: which certificates the mover trusts ([`Trust`]) and the connector that
//! speaks `http://` (HTTP/2 with prior knowledge) or `https://` (HTTP/2 through ALPN) over one
//! type, so the client and its retries, resume and several connections work the same on both.
//!
//! Trust, in order:
//! - `--fingerprint SHA256:…` pins the server's certificate: the handshake succeeds only with
//!   exactly that certificate (its SHA-256 over the DER, as `repo-server` prints it at start and
//!   in `/v1/capabilities`); name and validity dates are not checked, because the pin *is* the
//!   identity (how Proxmox Backup Server treats self-signed repositories). The server must still
//!   prove it holds the certificate's key (handshake signatures are verified).
//! - otherwise the system's roots (`SSL_CERT_FILE`, else Debian's
//!   `/etc/ssl/certs/ca-certificates.crt`) plus `--ca-file PEM`, with the usual web PKI checks:
//!   chain to a trusted root, name, validity dates.
//!
//! A failed check is [`Error::Tls`] naming it (unknown CA, name mismatch, fingerprint mismatch,
//! expired): never retried, because it will fail the same way again.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use schema::fingerprint::Fingerprint;
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Debian's bundle of the system's trusted roots.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Which server certificates the mover accepts (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Extra trusted roots, PEM (`--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// The pinned certificate (`--fingerprint`); replaces the CA checks when given.
    pub fingerprint: Option<Fingerprint>,
}

/// The SHA-256 fingerprint of a certificate.
pub fn fingerprint_of(der: &[u8]) -> Fingerprint {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    Fingerprint(out)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_pem(path: &Path, roots: &mut rustls::RootCertStore) -> Result<usize> {
    let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: {e}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&e))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    Ok(added)
}

impl Trust {
    /// The rustls configuration: ALPN `h2` only (the mover speaks nothing else).
    ///
    /// # Errors
    /// An unreadable `--ca-file`, or one with no certificate in it.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("TLS: {e}")))?;
        let mut cfg = if let Some(pin) = self.fingerprint {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { pin, provider }))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let system = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS));
            if system.exists() {
                // The system's bundle is a convenience: unreadable entries are skipped.
                let _ = load_pem(&system, &mut roots);
            }
            if let Some(ca) = &self.ca_file {
                if load_pem(ca, &mut roots)? == 0 {
                    return Err(Error::Invalid(format!(
                        "--ca-file {}: no certificate in it",
                        ca.display()
                    )));
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// Accepts exactly one certificate, by fingerprint.
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

/// Why the pinned check failed (carried through rustls as its `Other` certificate error).
#[derive(Debug)]
struct PinMismatch {
    pinned: Fingerprint,
    presented: Fingerprint,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fingerprint mismatch: the server presented {} but {} is pinned",
            self.presented, self.pinned
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint_of(end_entity);
        if presented == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch {
                    pinned: self.pin,
                    presented,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS handshake the mover refused or that failed: carried from the connector through hyper's
/// error chain to [`crate::client`], which turns it into [`Error::Tls`].
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Says which check failed, in the words an operator acts on.
fn explain(e: &rustls::Error, host: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "unknown CA: the certificate of {host} is not signed by a trusted authority \
                 (give its CA with --ca-file, or pin a self-signed certificate with --fingerprint)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("name mismatch: the certificate is not valid for {host} ({c:?})")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("expired: the certificate of {host} has expired ({c:?})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("not valid yet: the certificate of {host} is not valid yet")
            }
            CertificateError::Other(o) => o.to_string(),
            other => format!("the certificate of {host} was refused: {other:?}"),
        },
        other => format!("handshake with {host} failed: {other}"),
    }
}

/// One connection to the repository: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Stream {
    /// `http://`.
    Plain(TokioIo<TcpStream>),
    /// `https://`.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                let c = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Connects TCP (no delay, a connect timeout), then TLS when the client was made for `https://`.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    /// A connector; `tls` is the configuration for `https://`, `None` for `http://`.
    pub fn new(tls: Option<rustls::ClientConfig>) -> Connector {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        // The scheme is checked once by the client; here any URI is dialled by host and port.
        tcp.enforce_http(false);
        Connector {
            tcp,
            tls: tls.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c))),
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default().to_owned();
        let tcp = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?;
            let Some(tls) = tls else {
                return Ok(Stream::Plain(tcp));
            };
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| Refused(format!("{host:?} is not a server name: {e}")))?
                .to_owned();
            match tls.connect(name, tcp.into_inner()).await {
                Ok(s) => Ok(Stream::Tls(Box::new(TokioIo::new(s)))),
                Err(e) => {
                    let tls_error = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                    match tls_error {
                        Some(t) => Err(Box::new(Refused(explain(t, &host))) as BoxError),
                        // Not a TLS verdict (a reset mid-handshake): a network fault, retried.
                        None => Err(Box::new(e) as BoxError),
                    }
                }
            }
        })
    }
}

/// Whether the server at `authority` (`host:port`) answers a plain HTTP/2 preface like a TLS
/// server: with a TLS alert record (content type 21, version 3.x), or with `repo-server`'s
/// plain-text refusal on its TLS port. Two seconds at most; `false` when unsure.
pub async fn answers_like_tls(authority: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut tcp = TcpStream::connect(authority).await.ok()?;
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 256];
        let mut got = 0;
        while got < buf.len() {
            match tcp.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if got >= 2 && buf[0] == 21 && buf[1] == 3 {
                return Some(true);
            }
        }
        let text = String::from_utf8_lossy(&buf[..got]);
        Some(text.starts_with("HTTP/1.") && text.contains("use https://"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// Whether `host` (of a URL) is this machine: plain `http://` elsewhere earns a warning.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.5"));
        assert!(!is_loopback("backup.example.com"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let trust = Trust {
            ca_file: Some(empty),
            fingerprint: None,
        };
        let err = trust.client_config().expect_err("refused");
        assert!(err.to_string().contains("no certificate"), "{err}");
        let missing = Trust {
            ca_file: Some(dir.path().join("missing.pem")),
            fingerprint: None,
        };
        assert!(missing.client_config().is_err());
    }
}
