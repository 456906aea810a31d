//! API security: bearer tokens configured by their SHA-256 hash, each with scopes, and an
//! optional TLS listener.
//!
//! Scopes: `read` (every GET), `submit` (POST a canary), `operate` (promote, abort, pause,
//! resume, approve), `admin` (everything). A missing or unknown token is 401, a known token
//! without the scope 403. Tokens are compared as SHA-256 digests in constant time, against every
//! configured token (no early exit). The token's name is the actor in the audit log. With no
//! tokens configured the API is open, and canaryd only listens on loopback then.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read canaries, events, reports, rules.
    Read,
    /// Submit canaries.
    Submit,
    /// Promote, abort, pause, resume, approve.
    Operate,
    /// Everything.
    Admin,
}

/// `[[api.tokens]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The name recorded as the actor (`release-bot`, `alice`).
    pub name: String,
    /// Hex SHA-256 of the token (`canaryd token hash` prints it); the token itself is never
    /// stored.
    pub sha256: String,
    /// What the token may do.
    pub scopes: Vec<Scope>,
}

/// `[api.tls]`: serve HTTPS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Serve HTTPS with this certificate.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Let submitted specs carry command hooks (they run on the canaryd host; off by default:
    /// command hooks belong in environment profiles).
    #[serde(default)]
    pub allow_spec_commands: bool,
}

impl ApiConfig {
    /// Checks the tokens; problems as (key, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("api.tokens[{i}]");
            if t.name.trim().is_empty() {
                out.push((format!("{key}.name"), "must not be empty".into()));
            } else if !names.insert(t.name.clone()) {
                out.push((
                    format!("{key}.name"),
                    format!("duplicate token name {:?}", t.name),
                ));
            }
            if decode_hex(&t.sha256).is_none_or(|d| d.len() != 32) {
                out.push((
                    format!("{key}.sha256"),
                    "must be 64 hex digits (canaryd token hash prints it)".into(),
                ));
            }
            if t.scopes.is_empty() {
                out.push((format!("{key}.scopes"), "needs at least one scope".into()));
            }
        }
        out
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The hex SHA-256 of a token, as `[[api.tokens]] sha256` wants it.
pub fn hash_token(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.trim().as_bytes()))
}

/// Who made a request (an extension on every request that passed authentication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's name, or `anonymous` when the API is open.
    pub name: String,
}

/// The configured tokens, ready for comparisons.
pub struct Tokens {
    tokens: Vec<(String, [u8; 32], Vec<Scope>)>,
}

impl Tokens {
    /// From the config (invalid entries were rejected by validation and are skipped here).
    pub fn new(config: &ApiConfig) -> Self {
        let tokens = config
            .tokens
            .iter()
            .filter_map(|t| {
                let d = decode_hex(&t.sha256)?;
                let arr: [u8; 32] = d.try_into().ok()?;
                Some((t.name.clone(), arr, t.scopes.clone()))
            })
            .collect();
        Tokens { tokens }
    }

    /// Whether any token is configured (if not, the API is open).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The token matching `presented`, compared in constant time against all of them.
    fn find(&self, presented: &str) -> Option<(&str, &[Scope])> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, hash, scopes) in &self.tokens {
            let diff = hash
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some((name.as_str(), scopes.as_slice()));
            }
        }
        found
    }
}

/// The scope a request needs; None for unauthenticated endpoints.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    if matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/api/v1/openapi.json"
    ) {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return Some(Scope::Read);
    }
    if path == "/api/v1/canaries" {
        return Some(Scope::Submit);
    }
    if path.starts_with("/api/v1/canaries/") {
        return Some(Scope::Operate);
    }
    Some(Scope::Admin)
}

fn deny(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": if status == StatusCode::UNAUTHORIZED { "unauthorized" } else { "forbidden" }, "message": message, "details": []});
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"canaryd\""),
        );
    }
    resp
}

/// Why a request that changes something comes from another site's web page (a browser sends
/// `Origin` and `Sec-Fetch-Site`; the CLI, pipelines and curl send neither): a page a person
/// happens to open must not abort or promote canaries through an open loopback API.
fn cross_site(req: &Request) -> Option<String> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site.eq_ignore_ascii_case("cross-site")
    {
        return Some("cross-site requests from a browser may not change canaries".into());
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .trim_end_matches('/');
    if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Some(format!(
            "requests from the web page at {origin:?} may not change canaries (origin is not {host:?})"
        ));
    }
    None
}

/// The authentication middleware: attaches an [`Identity`] or answers 401/403.
pub async fn authenticate(
    State(tokens): State<Arc<Tokens>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(why) = cross_site(&req) {
        return deny(StatusCode::FORBIDDEN, &why);
    }
    let needed = required_scope(req.method(), req.uri().path());
    if !tokens.enabled() {
        req.extensions_mut().insert(Identity {
            name: "anonymous".into(),
        });
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(needed) = needed else {
        return next.run(req).await;
    };
    let Some(presented) = presented else {
        return deny(
            StatusCode::UNAUTHORIZED,
            "an API token is required (Authorization: Bearer TOKEN)",
        );
    };
    let Some((name, scopes)) = tokens.find(presented) else {
        return deny(StatusCode::UNAUTHORIZED, "unknown API token");
    };
    if !scopes.contains(&Scope::Admin) && !scopes.contains(&needed) {
        let message =
            format!("token {name:?} lacks the {needed:?} scope for this request").to_lowercase();
        return deny(StatusCode::FORBIDDEN, &message);
    }
    req.extensions_mut().insert(Identity {
        name: name.to_string(),
    });
    next.run(req).await
}

/// Why the API's TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or parsed.
    #[error("api.tls.cert_file {path}: {source}")]
    Cert {
        /// The file.
        path: String,
        /// Why.
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    /// The key file cannot be read or parsed.
    #[error("api.tls.key_file {path}: {source}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate and key.
    #[error("api.tls: {0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
    /// The bound socket has no local address.
    #[error("api.tls: {0}")]
    Socket(#[from] std::io::Error),
}

/// A TLS listener for `axum::serve`: TCP accepts run in a task, handshakes each in their own,
/// so a slow client cannot stall the others.
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Wraps a bound TCP listener with the certificate and key from `config`.
    pub fn new(tcp: tokio::net::TcpListener, config: &TlsConfig) -> Result<Self, TlsError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert_error = |source| TlsError::Cert {
            path: config.cert_file.clone(),
            source,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
            .map_err(cert_error)?
            .collect::<Result<_, _>>()
            .map_err(cert_error)?;
        let key =
            PrivateKeyDer::from_pem_file(&config.key_file).map_err(|source| TlsError::Key {
                path: config.key_file.clone(),
                source,
            })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = tcp.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    if let Ok(Ok(tls)) = handshake.await {
                        let _ = tx.send((tls, addr)).await;
                    }
                });
            }
        });
        Ok(TlsListener {
            incoming: rx,
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ApiConfig {
        ApiConfig {
            tokens: vec![
                TokenConfig {
                    name: "release-bot".into(),
                    sha256: hash_token("s3cret-bot"),
                    scopes: vec![Scope::Submit, Scope::Read],
                },
                TokenConfig {
                    name: "ops".into(),
                    sha256: hash_token("s3cret-ops"),
                    scopes: vec![Scope::Admin],
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn browser_pages_of_other_sites_cannot_change_canaries() {
        let req = |method: Method, headers: &[(&str, &str)]| {
            let mut b = Request::builder()
                .method(method)
                .uri("/api/v1/canaries/1/abort")
                .header("host", "127.0.0.1:8080");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        // The CLI, pipelines and curl send no Origin.
        assert_eq!(cross_site(&req(Method::POST, &[])), None);
        // canaryd's own pages (same origin) and reads from anywhere pass.
        let same = [("origin", "http://127.0.0.1:8080")];
        assert_eq!(cross_site(&req(Method::POST, &same)), None);
        let evil = [("origin", "https://evil.example")];
        assert_eq!(cross_site(&req(Method::GET, &evil)), None);
        let why = cross_site(&req(Method::POST, &evil)).unwrap();
        assert!(why.contains("evil.example"), "{why}");
        assert!(cross_site(&req(Method::POST, &[("origin", "null")])).is_some());
        let rebinding = [("origin", "http://attacker.example:8080")];
        assert!(cross_site(&req(Method::POST, &rebinding)).is_some());
        let fetch = [("sec-fetch-site", "cross-site")];
        assert!(cross_site(&req(Method::DELETE, &fetch)).is_some());
    }

    #[test]
    fn tokens_match_by_hash_only() {
        let t = Tokens::new(&config());
        assert_eq!(t.find("s3cret-bot").map(|f| f.0), Some("release-bot"));
        assert_eq!(t.find("s3cret-ops").map(|f| f.0), Some("ops"));
        assert!(t.find("s3cret").is_none());
        assert!(t.find("").is_none());
        assert_eq!(config().validate(), vec![]);
    }

    #[test]
    fn scopes_by_route() {
        assert_eq!(
            required_scope(&Method::GET, "/api/v1/canaries/3"),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope(&Method::POST, "/api/v1/canaries"),
            Some(Scope::Submit)
        );
        assert_eq!(
            required_scope(&Method::POST, "/api/v1/canaries/3/abort"),
            Some(Scope::Operate)
        );
        assert_eq!(
            required_scope(&Method::POST, "/api/v1/rules/reload"),
            Some(Scope::Admin)
        );
        assert_eq!(required_scope(&Method::GET, "/healthz"), None);
    }

    #[test]
    fn bad_token_config_is_named() {
        let mut c = config();
        c.tokens[0].sha256 = "abc".into();
        c.tokens[1].scopes.clear();
        let keys: Vec<String> = c.validate().into_iter().map(|e| e.0).collect();
        assert_eq!(keys, vec!["api.tokens[0].sha256", "api.tokens[1].scopes"]);
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[tokio::test]
    async fn the_tls_listener_serves_https() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(made.success());
        let config = TlsConfig {
            cert_file: cert.display().to_string(),
            key_file: key.display().to_string(),
        };
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, &config).unwrap();
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let body = client
            .get(format!("https://{addr}/healthz"))
            .send()
            .await
            .expect("an HTTPS answer")
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
        // Plain HTTP gets no answer from a TLS port.
        assert!(
            reqwest::get(format!("http://{addr}/healthz"))
                .await
                .is_err()
        );
    }

    #[test]
    fn missing_files_are_named() {
        let config = TlsConfig {
            cert_file: "/nonexistent/c.pem".into(),
            key_file: "/nonexistent/k.pem".into(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            TlsListener::new(tcp, &config).err().unwrap().to_string()
        });
        assert!(
            err.contains("api.tls.cert_file /nonexistent/c.pem"),
            "{err}"
        );
    }
}
