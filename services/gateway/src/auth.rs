//! API tokens: who may call the HTTP API, and who may destroy what it holds.
//!
//! When a token is configured (`DME_API_TOKEN`, an admin token, and/or `DME_API_TOKENS_FILE`),
//! every request needs `Authorization: Bearer <token>`, except the health probes
//! ([`OPEN_PATHS`]), the web page's static files and the API description ([`OPEN_PREFIXES`]):
//! those hold no data, and the page must load before it can ask for a token. A missing or
//! unknown token gets 401 with `WWW-Authenticate: Bearer`; a `user` token gets 403 on what
//! destroys data (`POST /reset`, any `DELETE`), which needs an `admin` token.
//!
//! The event streams and file downloads also take the token as `?token=` on `GET`/`HEAD`
//! ([`takes_query_token`]): a browser's `EventSource` cannot set headers, and a download is a
//! plain link. Such a token appears in the access logs of any proxy in front of the gateway;
//! the gateway itself never logs a query string or a token.
//!
//! Tokens are kept only as blake3 hashes and compared hash to hash, every configured token
//! every time, with blake3's constant-time equality: how long a check takes says nothing about
//! how much of a guess was right. A caller's identity for admission
//! ([`crate::admission::client_key`]) is `token:<first 8 hex digits of the hash>`.
//!
//! Without any token configured, everything stays open, as before, and start-up says so.

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::http::Method;
use actix_web::{HttpMessage, HttpResponse};
use futures::future::LocalBoxFuture;

use crate::GatewayConfig;

/// Paths any client may call without a token: the health probes, which orchestrators call
/// without credentials, and the page itself (static, the same for everyone).
const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/"];

/// Path prefixes any client may read without a token: the page's static files, and the API's
/// description and its docs page (the same for everyone, published with the source; a person
/// reads them in a browser, which cannot add a header to a page it navigates to).
const OPEN_PREFIXES: [&str; 3] = ["/ui/", "/openapi.json", "/docs"];

/// Shortest token accepted in the configuration: 16 characters of a random token are beyond
/// guessing over HTTP (`openssl rand -hex 32` makes a 64-character one).
pub const MIN_TOKEN_CHARS: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything a user does (upload, list, follow, select, download, retry), and also
    /// `POST /reset` and `DELETE`.
    Admin,
    /// Everything but `POST /reset` and `DELETE`.
    User,
}

/// A configured token, kept only as its blake3 hash (its `Debug` shows the identity, never the
/// token).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(blake3::Hash);

impl Token {
    /// The token `raw` (surrounding white space ignored).
    ///
    /// # Errors
    /// When it is shorter than [`MIN_TOKEN_CHARS`], or holds white space or a character that
    /// cannot travel in an HTTP header (anything but visible ASCII).
    pub fn parse(raw: &str) -> Result<Token, String> {
        let raw = raw.trim();
        if raw.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "a token must be at least {MIN_TOKEN_CHARS} characters (`openssl rand -hex 32` \
                 makes a good one)"
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token may hold visible ASCII characters only".into());
        }
        Ok(Token(blake3::hash(raw.as_bytes())))
    }

    /// Who presents this token, for admission and logs: `token:` and the first 8 hex digits of
    /// its hash (which reveal nothing of the token).
    pub fn identity(&self) -> String {
        format!("token:{}", &self.0.to_hex()[..8])
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.identity())
    }
}

/// A tokens file (`DME_API_TOKENS_FILE`), read at start-up: one `<role> <token>` per line,
/// the role `admin` or `user`; blank lines and lines starting with `#` are ignored.
///
/// ```text
/// # the operator
/// admin 4f7c0e2a9b1d8e3f6a5c4b3a29180716
/// # the band's laptop
/// user  9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d
/// ```
#[derive(Clone)]
pub struct TokensFile {
    path: PathBuf,
    tokens: Vec<(Role, Token)>,
}

impl fmt::Debug for TokensFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokensFile({}, {} tokens)",
            self.path.display(),
            self.tokens.len()
        )
    }
}

impl TokensFile {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// When it cannot be read, a line is not `<role> <token>` with a known role and a valid
    /// token ([`Token::parse`]), or it holds no token at all; each error names the line.
    pub fn read(path: &Path) -> Result<TokensFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
        let tokens = parse_tokens(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TokensFile {
            path: path.to_path_buf(),
            tokens,
        })
    }
}

/// The tokens of a tokens file's text.
fn parse_tokens(text: &str) -> Result<Vec<(Role, Token)>, String> {
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("line {}: expected `<role> <token>`", n + 1));
        };
        let role = match role {
            "admin" => Role::Admin,
            "user" => Role::User,
            other => {
                return Err(format!(
                    "line {}: unknown role `{other}` (admin or user)",
                    n + 1
                ))
            }
        };
        let token = Token::parse(token).map_err(|e| format!("line {}: {e}", n + 1))?;
        tokens.push((role, token));
    }
    if tokens.is_empty() {
        return Err("no token in the file".into());
    }
    Ok(tokens)
}

/// The clap value parser of `DME_API_TOKENS_FILE`.
pub(crate) fn parse_tokens_file(raw: &str) -> Result<TokensFile, String> {
    TokensFile::read(Path::new(raw))
}

/// Who made a request, put in its extensions when a token let it in.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The token's identity ([`Token::identity`]).
    pub identity: String,
}

/// Every configured token with its role.
struct Tokens(Vec<(Role, Token)>);

impl Tokens {
    fn of(config: &GatewayConfig) -> Tokens {
        let mut tokens: Vec<(Role, Token)> = Vec::new();
        if let Some(token) = &config.api_token {
            tokens.push((Role::Admin, token.clone()));
        }
        if let Some(file) = &config.api_tokens_file {
            tokens.extend(file.tokens.iter().cloned());
        }
        Tokens(tokens)
    }

    /// The role of the presented token `raw`, or `None`. Every configured token is compared,
    /// hash to hash in constant time, whatever matched before.
    fn role_of(&self, raw: &str) -> Option<(Role, &Token)> {
        let presented = blake3::hash(raw.as_bytes());
        let mut found = None;
        for (role, token) in &self.0 {
            // blake3::Hash's equality is constant-time.
            if token.0 == presented && found.is_none() {
                found = Some((*role, token));
            }
        }
        found
    }
}

/// Whether start-up has said how the API is guarded (every HTTP worker builds the middleware).
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// The middleware that checks tokens; mounted once on the whole App.
pub(crate) struct RequireToken {
    tokens: Rc<Tokens>,
}

impl RequireToken {
    /// The middleware for the tokens `config` names; says once at start-up whether the API is
    /// open.
    pub(crate) fn new(config: &GatewayConfig) -> RequireToken {
        let tokens = Tokens::of(config);
        if !ANNOUNCED.swap(true, Ordering::Relaxed) {
            if tokens.0.is_empty() {
                tracing::warn!(
                    "no API token configured (DME_API_TOKEN, DME_API_TOKENS_FILE): the HTTP API \
                     is open to anyone who reaches it"
                );
            } else {
                let admins = tokens.0.iter().filter(|(r, _)| *r == Role::Admin).count();
                tracing::info!(
                    admin = admins,
                    user = tokens.0.len() - admins,
                    "the HTTP API requires a bearer token"
                );
            }
        }
        RequireToken {
            tokens: Rc::new(tokens),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequireToken
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = RequireTokenService<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(RequireTokenService {
            service,
            tokens: self.tokens.clone(),
        }))
    }
}

/// [`RequireToken`] around one service.
pub(crate) struct RequireTokenService<S> {
    service: S,
    tokens: Rc<Tokens>,
}

impl<S, B> Service<ServiceRequest> for RequireTokenService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        match decide(&self.tokens, &req) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                let call = self.service.call(req);
                Box::pin(async move { call.await.map(ServiceResponse::map_into_left_body) })
            }
            Err(refusal) => {
                let response = req.into_response(refusal.response()).map_into_right_body();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

/// Why a request is refused.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// No token presented (401).
    Missing,
    /// A token no one configured (401).
    Invalid,
    /// A user token on what needs an admin one (403): the request, for the message.
    NotAdmin(String),
}

impl Refusal {
    /// 401 with a JSON error and the challenge (RFC 6750: `invalid_token` when a token was
    /// given), or 403 with a JSON error.
    fn response(&self) -> HttpResponse {
        let (message, challenge) = match self {
            Refusal::Missing => (
                "an API token is required: send `Authorization: Bearer <token>`",
                "Bearer realm=\"dme\"",
            ),
            Refusal::Invalid => (
                "the API token was not accepted",
                "Bearer realm=\"dme\", error=\"invalid_token\"",
            ),
            Refusal::NotAdmin(request) => {
                return HttpResponse::Forbidden().json(serde_json::json!({
                    "error": format!("{request} needs an admin token; this one is a user's")
                }))
            }
        };
        HttpResponse::Unauthorized()
            .insert_header((WWW_AUTHENTICATE, challenge))
            .json(serde_json::json!({ "error": message }))
    }
}

/// Whether `req` may go on, and as whom (`None`: no token is configured, or none is needed).
fn decide(tokens: &Tokens, req: &ServiceRequest) -> Result<Option<Caller>, Refusal> {
    if tokens.0.is_empty() {
        return Ok(None);
    }
    // The path as the router matches it (percent-encoded unreserved characters decoded), so
    // no spelling of a path reaches a route under a different rule.
    let path = req.match_info().as_str();
    if is_open(path) {
        return Ok(None);
    }
    let raw = presented_token(req, path).ok_or(Refusal::Missing)?;
    let (role, token) = tokens.role_of(&raw).ok_or(Refusal::Invalid)?;
    if needs_admin(req.method(), path) && role != Role::Admin {
        return Err(Refusal::NotAdmin(format!("{} {path}", req.method())));
    }
    Ok(Some(Caller {
        identity: token.identity(),
    }))
}

/// Whether `path` is served without a token.
fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Whether `method` on `path` destroys data: `POST /reset` and any `DELETE`.
fn needs_admin(method: &Method, path: &str) -> bool {
    *method == Method::DELETE || (*method == Method::POST && path == "/reset")
}

/// Whether `path` takes its token as `?token=` too: the event streams (`/events`,
/// `/music/{id}/events`) and the file downloads (`/music/{id}/track/{track}`,
/// `/music/{id}/mix/{key}`), which a browser opens without a way to add a header.
fn takes_query_token(method: &Method, path: &str) -> bool {
    if *method != Method::GET && *method != Method::HEAD {
        return false;
    }
    if path == "/events" {
        return true;
    }
    let parts: Vec<&str> = path.split('/').collect();
    matches!(
        parts.as_slice(),
        ["", "music", _, "events"] | ["", "music", _, "track" | "mix", _]
    )
}

/// The token the request presents: its `Authorization: Bearer` header, else, where allowed,
/// its `token` query parameter.
fn presented_token(req: &ServiceRequest, path: &str) -> Option<String> {
    if let Some(header) = req.headers().get(AUTHORIZATION) {
        let value = header.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    if !takes_query_token(req.method(), path) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    actix_web::web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .token
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789";
    const USER: &str = "user-token-0123456789";

    #[test]
    fn a_tokens_file_is_roles_and_tokens_with_comments() {
        let text = format!("# operators\n\nadmin {ADMIN}\n  user\t{USER}  \n# end\n");
        let tokens = Tokens(parse_tokens(&text).unwrap());
        assert_eq!(tokens.role_of(ADMIN).map(|(r, _)| r), Some(Role::Admin));
        assert_eq!(tokens.role_of(USER).map(|(r, _)| r), Some(Role::User));
        assert!(tokens.role_of("user-token-012345678").is_none());
        assert!(tokens.role_of("").is_none());

        for (bad, why) in [
            ("root 0123456789abcdef0", "unknown role"),
            ("admin", "expected"),
            ("admin 0123456789abcdef extra", "expected"),
            ("user short", "at least 16"),
            ("# nothing\n", "no token"),
        ] {
            let e = parse_tokens(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse_tokens("admin 0123456789abcdef\nuser x")
            .unwrap_err()
            .starts_with("line 2"));
    }

    #[test]
    fn a_token_shows_only_its_identity() {
        let token = Token::parse(&format!("  {ADMIN}\n")).unwrap();
        let id = token.identity();
        assert!(id.starts_with("token:") && id.len() == 14, "{id}");
        assert_eq!(format!("{token:?}"), id);
        assert!(!format!("{token:?}").contains(ADMIN));
        assert_eq!(Token::parse(ADMIN).unwrap(), token, "white space ignored");
        assert!(Token::parse("0123456789abcdé0").is_err(), "ASCII only");
        assert!(Token::parse("0123456789 abcdef").is_err(), "no white space");
    }

    #[test]
    fn only_streams_and_downloads_take_a_query_token() {
        for path in [
            "/events",
            "/music/12/events",
            "/music/12/track/34",
            "/music/12/mix/0-2~-3.5",
        ] {
            assert!(takes_query_token(&Method::GET, path), "{path}");
            assert!(takes_query_token(&Method::HEAD, path), "{path}");
        }
        assert!(!takes_query_token(&Method::POST, "/events"));
        for path in [
            "/music",
            "/music/12",
            "/music/12/track/34/peaks",
            "/reset",
            "/job",
        ] {
            assert!(!takes_query_token(&Method::GET, path), "{path}");
        }
    }

    #[test]
    fn probes_and_static_files_are_open_and_destruction_needs_an_admin() {
        for path in ["/healthz", "/readyz", "/", "/ui/app.js", "/openapi.json"] {
            assert!(is_open(path), "{path}");
        }
        for path in [
            "/music",
            "/events",
            "/reset",
            "/metrics",
            "/healthz/x",
            "/uix",
        ] {
            assert!(!is_open(path), "{path}");
        }
        assert!(needs_admin(&Method::POST, "/reset"));
        assert!(needs_admin(&Method::DELETE, "/music/12"));
        assert!(!needs_admin(&Method::POST, "/music/12"));
        assert!(!needs_admin(&Method::GET, "/reset"));
    }
}
