//! A small HTTP client on hyper for tests: h2c with prior knowledge, HTTP/1.1, or TLS.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Protocol version used.
    pub version: http::Version,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error.code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

#[derive(Clone, Debug)]
enum Transport {
    Pool(Box<hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>>),
    Tls(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    Tls1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>),
}

/// A client bound to one server and one token.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    t: Transport,
    contract: Option<Arc<crate::contract::Contract>>,
}

impl Client {
    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2(base: &str, token: Option<&str>) -> Client {
        let mut b = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        b.http2_only(true)
            .http2_initial_stream_window_size(8 << 20)
            .http2_initial_connection_window_size(32 << 20)
            .http2_max_frame_size(1 << 20);
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        Client {
            base: base.into(),
            token: token.map(Into::into),
            t: Transport::Pool(Box::new(b.build(conn))),
            contract: None,
        }
    }

    /// HTTP/1.1.
    pub fn h1(base: &str, token: Option<&str>) -> Client {
        let b = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        Client {
            base: base.into(),
            token: token.map(Into::into),
            t: Transport::Pool(Box::new(b.build(HttpConnector::new()))),
            contract: None,
        }
    }

    /// TLS to `addr`, trusting `ca_der`, negotiating `alpn` (`h2` or `http/1.1`).
    pub async fn tls(
        addr: std::net::SocketAddr,
        ca_der: Vec<u8>,
        alpn: &str,
        token: Option<&str>,
    ) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(ca_der))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let negotiated = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        assert_eq!(negotiated.as_deref(), Some(alpn), "ALPN");
        let io = TokioIo::new(tls);
        let t = if alpn == "h2" {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Transport::Tls(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Transport::Tls1(Arc::new(tokio::sync::Mutex::new(send)))
        };
        Client {
            base: format!("https://localhost:{}", addr.port()),
            token: token.map(Into::into),
            t,
            contract: None,
        }
    }

    /// The same client, checking every answer against `contract` (a mismatch panics).
    pub fn checked(&self, contract: Arc<crate::contract::Contract>) -> Client {
        Client {
            contract: Some(contract),
            ..self.clone()
        }
    }

    /// The same transport with another token.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            token: token.map(Into::into),
            ..self.clone()
        }
    }

    /// Sends a request.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let what = format!("{method} {path}");
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends a request; a transport failure (refused, reset before or during the body) is an `Err`.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let method_name = method.as_str().to_owned();
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let local = |mut req: Request<Full<Bytes>>| {
            *req.uri_mut() = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .parse()
                .unwrap();
            req.headers_mut()
                .insert("host", "localhost".parse().unwrap());
            req
        };
        let resp = match &self.t {
            Transport::Pool(c) => c.request(req).await.map_err(|e| format!("{e:?}"))?,
            Transport::Tls(s) => s
                .clone()
                .send_request(local(req))
                .await
                .map_err(|e| e.to_string())?,
            Transport::Tls1(s) => {
                let mut s = s.lock().await;
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(local(req))
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body broke off: {e}"))?
            .to_bytes();
        if let Some(c) = &self.contract {
            let media = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            if let Err(e) = c.check(&method_name, path, parts.status, media, &body) {
                panic!("the answer does not match the API document: {e}");
            }
        }
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    /// PUT/POST of JSON.
    pub async fn json(&self, method: Method, path: &str, v: &serde_json::Value) -> Resp {
        self.send(
            method,
            path,
            &[("content-type", "application/json")],
            v.to_string(),
        )
        .await
    }
}
