//! Who may spend through `compute proxy`. The proxy pays from the user's escrow for every
//! request it forwards, so a request must prove it comes from a client the user set up, not from
//! a web page in the user's browser (cross-site requests, DNS rebinding) or another local user:
//!
//! - `Authorization: Bearer <token>` on every route (what OpenAI clients send as their API key),
//!   compared in constant time; the token is random per start, or read from `--token-file`;
//! - the `Host` header must name the proxy itself (its listen address, or `localhost`,
//!   `127.0.0.1` or `[::1]` with its port): a rebound DNS name is refused (421);
//! - a request carrying an `Origin` header (browsers add it) is refused (403) unless that origin
//!   was allowed with `--allow-origin`;
//! - bodies must be `application/json` (415): browsers send `text/plain` forms cross-site
//!   without asking first;
//! - the proxy listens on loopback only, unless `--allow-remote`.

use crate::{files, proxy::error};
use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

/// The token file written beside the state file when no `--token-file` is given.
pub const TOKEN_FILE: &str = "proxy-token";

/// What the proxy accepts.
pub struct Access {
    token: String,
    /// `Host` values naming the proxy, lower-case.
    hosts: Vec<String>,
    /// Listening on every address with `--allow-remote`: any IP literal with this port is the
    /// proxy too (a DNS name could be rebound; an address cannot).
    any_address_port: Option<u16>,
    origins: Vec<String>,
}

/// Why a request was refused before anything was signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("send the proxy token as `Authorization: Bearer <token>` (the OpenAI API key)")]
    NoToken,
    #[error("the API key is not this proxy's token")]
    BadToken,
    #[error("Host `{0}` is not this proxy")]
    Host(String),
    #[error("requests from origin `{0}` are not allowed (see `--allow-origin`)")]
    Origin(String),
    #[error("the body must be application/json, not `{0}`")]
    ContentType(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NoToken | Refusal::BadToken => StatusCode::UNAUTHORIZED,
            Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Origin(_) => StatusCode::FORBIDDEN,
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refusal::NoToken => "missing_api_key",
            Refusal::BadToken => "invalid_api_key",
            Refusal::Host(_) => "host_not_allowed",
            Refusal::Origin(_) => "origin_not_allowed",
            Refusal::ContentType(_) => "unsupported_media_type",
        }
    }

    /// The OpenAI-style error answer.
    pub fn into_response(self) -> Response {
        let mut resp = error(self.status(), self.code(), self.to_string());
        if matches!(self, Refusal::NoToken | Refusal::BadToken) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl Access {
    /// Accept `token` on a proxy listening on `listen`, from the browser origins `origins`.
    pub fn new(
        token: String,
        listen: SocketAddr,
        allow_remote: bool,
        origins: Vec<String>,
    ) -> Self {
        let port = listen.port();
        let mut hosts: Vec<String> = [
            listen.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]
        .into_iter()
        .collect();
        if port == 80 {
            // Clients leave the default port out.
            let ip = match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            hosts.extend([ip, "localhost".into(), "127.0.0.1".into(), "[::1]".into()]);
        }
        let hosts = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        let any_address_port = (allow_remote && listen.ip().is_unspecified()).then_some(port);
        let origins = origins.into_iter().map(|o| o.trim_end_matches('/').to_string()).collect();
        Access { token, hosts, any_address_port, origins }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if self.hosts.contains(&host) {
            return true;
        }
        let Some(port) = self.any_address_port else { return false };
        let Some((name, p)) = host.rsplit_once(':') else { return false };
        let name = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
        p.parse() == Ok(port) && name.parse::<IpAddr>().is_ok()
    }

    /// The allowed origin this request comes from, if it names one; a refusal if it names
    /// another.
    fn origin<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, Refusal> {
        let Some(origin) = headers.get(header::ORIGIN) else { return Ok(None) };
        let origin = origin.to_str().map_err(|_| Refusal::Origin("(not text)".into()))?;
        if self.origins.iter().any(|o| o == origin.trim_end_matches('/')) {
            Ok(Some(origin))
        } else {
            Err(Refusal::Origin(origin.to_string()))
        }
    }

    /// Every check but the origin's, in the order a refusal reports. Uploads to `/v1/files` are
    /// `multipart/form-data` as OpenAI's clients send them (the token still guards them: a
    /// cross-site form cannot send it).
    fn check_rest(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Refusal::NoToken)?;
        if !constant_time_eq(presented.as_bytes(), self.token.as_bytes()) {
            return Err(Refusal::BadToken);
        }
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let media = ct.split(';').next().unwrap_or("").trim();
            let upload = path == "/v1/files" && media.eq_ignore_ascii_case("multipart/form-data");
            if !media.eq_ignore_ascii_case("application/json") && !upload {
                return Err(Refusal::ContentType(ct.to_string()));
            }
        }
        Ok(())
    }

    /// Check a request: host, origin, token, content type (the middleware runs the same
    /// checks in steps, to answer an allowed origin's preflight).
    #[cfg(test)]
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !self.host_allowed(host) {
            return Err(Refusal::Host(host.to_string()));
        }
        self.origin(headers)?;
        self.check_rest(method, "/v1/chat/completions", headers)
    }
}

/// Equal bytes, in a time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The middleware: refuse what [`Access::check`] refuses; answer the CORS preflight of an
/// allowed origin and mark its answers readable by it.
pub async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !access.host_allowed(host) {
        return Refusal::Host(host.to_string()).into_response();
    }
    let origin = match access.origin(req.headers()) {
        Ok(o) => o.and_then(|o| HeaderValue::from_str(o).ok()),
        Err(r) => return r.into_response(),
    };
    let mut resp = if origin.is_some() && req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else if let Err(r) = access.check_rest(req.method(), req.uri().path(), req.headers()) {
        r.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

/// Why the proxy will not start as asked.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "{0} is not a loopback address: anyone who can reach it could spend your escrow with the \
         token; pass --allow-remote to listen there anyway"
    )]
    Remote(SocketAddr),
    #[error("the token file {0} is empty")]
    EmptyToken(String),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error("cannot generate a token: {0}")]
    Random(std::io::Error),
}

/// Refuse a non-loopback listen address unless `allow_remote`; with it, warn.
pub fn check_listen(listen: SocketAddr, allow_remote: bool) -> Result<(), SetupError> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    if !allow_remote {
        return Err(SetupError::Remote(listen));
    }
    eprintln!(
        "WARNING: listening on {listen}, reachable from other machines: whoever learns the proxy \
         token can spend your escrow. Use a firewall, and prefer 127.0.0.1."
    );
    Ok(())
}

/// The proxy's token: read from `token_file` (which must be private), or 32 fresh random bytes
/// as hex, written `0600` to `proxy-token` beside the state file. Returns the token and, when
/// generated, where it was written.
pub fn token(
    token_file: Option<&Path>,
    state_path: &Path,
) -> Result<(String, Option<PathBuf>), SetupError> {
    if let Some(path) = token_file {
        let token = files::read_private(path)?;
        if token.is_empty() {
            return Err(SetupError::EmptyToken(path.display().to_string()));
        }
        return Ok((token, None));
    }
    let token = files::random_hex(32).map_err(SetupError::Random)?;
    let path = state_path.parent().unwrap_or(Path::new("")).join(TOKEN_FILE);
    files::write_private(&path, format!("{token}\n").as_bytes())?;
    Ok((token, Some(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn access() -> Access {
        Access::new(TOKEN.into(), "127.0.0.1:8788".parse().unwrap(), false, vec![])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// What an OpenAI client on this machine sends.
    fn good() -> Vec<(&'static str, String)> {
        vec![
            ("host", "127.0.0.1:8788".into()),
            ("authorization", format!("Bearer {TOKEN}")),
            ("content-type", "application/json".into()),
        ]
    }

    fn with(changes: &[(&'static str, Option<&str>)]) -> HeaderMap {
        let mut pairs = good();
        for (k, v) in changes {
            pairs.retain(|(name, _)| name != k);
            if let Some(v) = v {
                pairs.push((k, v.to_string()));
            }
        }
        let refs: Vec<(&'static str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers(&refs)
    }

    #[test]
    fn a_local_client_with_the_token_passes() {
        let a = access();
        assert_eq!(a.check(&Method::POST, &with(&[])), Ok(()));
        for host in ["localhost:8788", "LOCALHOST:8788", "[::1]:8788", "127.0.0.1:8788"] {
            assert_eq!(a.check(&Method::POST, &with(&[("host", Some(host))])), Ok(()), "{host}");
        }
        let charset = with(&[("content-type", Some("application/json; charset=utf-8"))]);
        assert_eq!(a.check(&Method::POST, &charset), Ok(()));
        // GET has no body to check.
        assert_eq!(a.check(&Method::GET, &with(&[("content-type", None)])), Ok(()));
        assert_eq!(
            a.check(&Method::GET, &with(&[("authorization", Some(&format!("bearer {TOKEN}")))])),
            Ok(())
        );
    }

    #[test]
    fn requests_without_the_token_are_refused() {
        let a = access();
        assert_eq!(
            a.check(&Method::POST, &with(&[("authorization", None)])),
            Err(Refusal::NoToken)
        );
        assert_eq!(a.check(&Method::GET, &with(&[("authorization", None)])), Err(Refusal::NoToken));
        for wrong in [
            "Bearer not-the-token".to_string(),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            format!("Bearer {TOKEN}0"),
            "Bearer ".to_string(),
        ] {
            let r = a.check(&Method::POST, &with(&[("authorization", Some(&wrong))]));
            assert!(matches!(r, Err(Refusal::BadToken | Refusal::NoToken)), "{wrong}: {r:?}");
        }
        // Basic auth carrying the token is not a bearer token.
        let basic = format!("Basic {TOKEN}");
        assert_eq!(
            a.check(&Method::POST, &with(&[("authorization", Some(&basic))])),
            Err(Refusal::NoToken)
        );
        assert_eq!(Refusal::BadToken.into_response().status(), 401);
    }

    #[test]
    fn a_rebound_host_is_refused() {
        let a = access();
        for host in
            ["attacker.example:8788", "localhost:9999", "127.0.0.1", "evil.localhost:8788", ""]
        {
            let r = a.check(&Method::POST, &with(&[("host", Some(host))]));
            assert_eq!(r, Err(Refusal::Host(host.into())), "{host}");
        }
        assert_eq!(
            a.check(&Method::POST, &with(&[("host", None)])),
            Err(Refusal::Host(String::new()))
        );
        assert_eq!(Refusal::Host("x".into()).into_response().status(), 421);
    }

    #[test]
    fn origins_are_refused_unless_allowed() {
        let a = access();
        let page = with(&[("origin", Some("https://evil.example"))]);
        assert_eq!(
            a.check(&Method::POST, &page),
            Err(Refusal::Origin("https://evil.example".into()))
        );
        assert_eq!(Refusal::Origin(String::new()).into_response().status(), 403);
        let allowed = Access::new(
            TOKEN.into(),
            "127.0.0.1:8788".parse().unwrap(),
            false,
            vec!["http://localhost:3000".into()],
        );
        let mine = with(&[("origin", Some("http://localhost:3000"))]);
        assert_eq!(allowed.check(&Method::POST, &mine), Ok(()));
        assert!(allowed.check(&Method::POST, &page).is_err());
    }

    #[test]
    fn bodies_other_than_json_are_refused() {
        let a = access();
        for ct in
            ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
        {
            let r = a.check(&Method::POST, &with(&[("content-type", Some(ct))]));
            assert_eq!(r, Err(Refusal::ContentType(ct.into())), "{ct}");
        }
        let r = a.check(&Method::POST, &with(&[("content-type", None)]));
        assert_eq!(r, Err(Refusal::ContentType(String::new())));
        // Only the upload route takes a form, and only with the token.
        let form = with(&[("content-type", Some("multipart/form-data; boundary=x"))]);
        assert_eq!(a.check_rest(&Method::POST, "/v1/files", &form), Ok(()));
        let mut no_token = form.clone();
        no_token.remove(header::AUTHORIZATION);
        assert_eq!(a.check_rest(&Method::POST, "/v1/files", &no_token), Err(Refusal::NoToken));
        assert_eq!(Refusal::ContentType(String::new()).into_response().status(), 415);
    }

    #[test]
    fn remote_listening_needs_consent_and_ip_literals() {
        let any: SocketAddr = "0.0.0.0:8788".parse().unwrap();
        assert!(check_listen(any, false).is_err());
        assert!(check_listen("192.168.1.5:8788".parse().unwrap(), false).is_err());
        assert!(check_listen("127.0.0.1:8788".parse().unwrap(), false).is_ok());
        assert!(check_listen("[::1]:8788".parse().unwrap(), false).is_ok());
        assert!(check_listen(any, true).is_ok());
        let a = Access::new(TOKEN.into(), any, true, vec![]);
        assert_eq!(a.check(&Method::POST, &with(&[("host", Some("192.168.1.5:8788"))])), Ok(()));
        assert!(a.check(&Method::POST, &with(&[("host", Some("rebound.example:8788"))])).is_err());
        assert!(a.check(&Method::POST, &with(&[("host", Some("192.168.1.5:9999"))])).is_err());
    }

    #[test]
    fn the_generated_token_is_private_and_a_given_one_must_be() {
        let dir = std::env::temp_dir().join(format!(
            "compute-token-{}-{}",
            std::process::id(),
            files::random_hex(4).unwrap()
        ));
        let state = dir.join("state").join("state.json");
        let (token, written) = token(None, &state).unwrap();
        assert_eq!(token.len(), 64);
        let written = written.unwrap();
        assert_eq!(written, dir.join("state").join(TOKEN_FILE));
        assert_eq!(files::read_private(&written).unwrap(), token);
        let (again, _) = super::token(None, &state).unwrap();
        assert_ne!(again, token, "a fresh token each start");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let given = dir.join("given");
            std::fs::write(&given, "secret-token\n").unwrap();
            std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = super::token(Some(&given), &state).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
            std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(super::token(Some(&given), &state).unwrap(), ("secret-token".into(), None));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The middleware in front of a route, over real HTTP: status codes and OpenAI error bodies.
    #[tokio::test]
    async fn the_guard_answers_refusals_in_openai_shape() {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let access = Arc::new(Access::new(
            TOKEN.into(),
            listen,
            false,
            vec!["http://localhost:3000".into()],
        ));
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(|| async { "paid" }))
            .layer(axum::middleware::from_fn_with_state(access, guard));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{listen}/v1/chat/completions");
        let http = reqwest::Client::new();
        let send = |changes: &[(&'static str, Option<&str>)]| {
            let mut req = http.post(&url).body("{}");
            for (k, v) in with(&[("host", Some(&listen.to_string()))]).iter() {
                if !changes.iter().any(|(c, _)| *c == k.as_str()) {
                    req = req.header(k, v);
                }
            }
            for (k, v) in changes {
                if let Some(v) = v {
                    req = req.header(*k, *v);
                }
            }
            async move {
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap())
            }
        };
        assert_eq!(send(&[]).await, (200, "paid".to_string()));
        let other_port = format!("localhost:{}", listen.port() + 1);
        let wrong = format!("Bearer {}", "f".repeat(32));
        for (changes, status, code) in [
            (vec![("authorization", None)], 401, "missing_api_key"),
            (vec![("authorization", Some(wrong.as_str()))], 401, "invalid_api_key"),
            (vec![("host", Some(other_port.as_str()))], 421, "host_not_allowed"),
            (vec![("origin", Some("https://evil.example"))], 403, "origin_not_allowed"),
            (vec![("content-type", Some("text/plain"))], 415, "unsupported_media_type"),
        ] {
            let (got, body) = send(&changes).await;
            let body: compute_client::wire::ErrorBody =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert_eq!((got, body.error.code.as_str()), (status, code), "{changes:?}");
        }
        // An allowed origin: its preflight is answered, and its requests readable by it.
        let resp = http
            .request(Method::OPTIONS, &url)
            .header("origin", "http://localhost:3000")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let (status, _) = send(&[("origin", Some("http://localhost:3000"))]).await;
        assert_eq!(status, 200);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
