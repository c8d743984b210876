//! Bearer tokens: which requests need one, where a token may come from, and the check.
//!
//! Without tokens nothing is checked. With tokens:
//! * writes (`POST`) need `Authorization: Bearer TOKEN`; a cookie is not enough, so that
//!   another site cannot make a logged-in browser write;
//! * the dashboard (`GET /`) takes the header or the `afs_token` cookie; `GET /?token=TOKEN`
//!   checks the token, sets the cookie (HttpOnly, SameSite=Strict) and redirects to `/`, so
//!   the token does not stay in the address bar;
//! * reads (`GET /v1/...`, `/metrics`) are open unless `--protect-reads`, then they take the
//!   header or the cookie;
//! * `/healthz` and the dashboard's script and style sheet are always open.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use std::sync::Arc;

use super::api::{Access, ROUTES};
use super::error::ApiError;
use super::AppState;
use crate::exit::InvalidInput;

/// Name of the dashboard's cookie.
const COOKIE: &str = "afs_token";

/// The configured tokens and what they protect.
pub(super) struct Auth {
    tokens: Vec<Vec<u8>>,
    protect_reads: bool,
}

impl Auth {
    /// Checks the tokens: each must be non-empty printable ASCII without spaces, quotes,
    /// commas, semicolons or backslashes (it travels in a header and a cookie). `tokens_from`
    /// and `protect_from` name where the tokens and `protect_reads` came from, for messages.
    pub(super) fn new(
        tokens: &[String],
        protect_reads: bool,
        tokens_from: &str,
        protect_from: &str,
    ) -> anyhow::Result<Self> {
        for token in tokens {
            let bad = token
                .bytes()
                .find(|b| !(0x21..=0x7e).contains(b) || b"\",;\\".contains(b));
            if token.is_empty() || bad.is_some() {
                return Err(InvalidInput(format!(
                    "invalid {tokens_from}: a token must be non-empty printable ASCII without \
                     spaces, quotes, commas, semicolons or backslashes"
                ))
                .into());
            }
        }
        if protect_reads && tokens.is_empty() {
            return Err(InvalidInput(format!(
                "invalid {protect_from}: no token is configured (pass --token, set AFS_TOKENS, \
                 or set serve.tokens or serve.token_file in the config file)"
            ))
            .into());
        }
        Ok(Auth {
            tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
            protect_reads,
        })
    }

    /// Whether any token is configured.
    pub(super) fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `candidate` is one of the tokens. Compares every byte of every token, so the
    /// time taken does not tell how much of a guess was right.
    fn accepts(&self, candidate: &[u8]) -> bool {
        let mut found = false;
        for token in &self.tokens {
            let mut diff = token.len() ^ candidate.len();
            for (i, b) in token.iter().enumerate() {
                diff |= usize::from(b ^ candidate.get(i).copied().unwrap_or(0));
            }
            found |= diff == 0;
        }
        found
    }

    /// The token of the `Authorization: Bearer` header, if any.
    fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
        let value = headers.get(header::AUTHORIZATION)?.as_bytes();
        let scheme = value.get(..7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| value[7..].trim_ascii())
    }

    /// The token of the `afs_token` cookie, if any.
    fn cookie(headers: &HeaderMap) -> Option<&[u8]> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                pair.strip_prefix(COOKIE.as_bytes())?.strip_prefix(b"=")
            })
    }

    /// Checks a request with the header (and, when `cookie_ok`, the cookie).
    fn check(&self, headers: &HeaderMap, cookie_ok: bool) -> Result<(), ApiError> {
        let given =
            Self::bearer(headers).or_else(|| cookie_ok.then(|| Self::cookie(headers)).flatten());
        match given {
            Some(token) if self.accepts(token) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("the token is not valid")),
            None => Err(ApiError::unauthorized(
                "a token is required: send the header `Authorization: Bearer TOKEN`",
            )),
        }
    }
}

/// Middleware: lets a request through when its route's access rule is met, answers 401
/// otherwise (see the module documentation).
pub(super) async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    if !auth.enabled() {
        return next.run(request).await;
    }
    let access = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| {
            ROUTES
                .iter()
                .find(|r| r.path == path.as_str() && r.method == request.method())
        })
        .map_or(Access::Open, |r| r.access);
    let headers = request.headers();
    let outcome = match access {
        Access::Open => Ok(()),
        Access::Read if !auth.protect_reads => Ok(()),
        Access::Read => auth.check(headers, true),
        Access::Write => auth.check(headers, false),
        Access::Dashboard => {
            if let Some(token) = token_param(request.uri().query()) {
                return dashboard_login(auth, &token);
            }
            match auth.check(headers, true) {
                Ok(()) => Ok(()),
                Err(_) => return dashboard_refusal(),
            }
        }
    };
    match outcome {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// The `token` parameter of a query string, percent-decoded.
fn token_param(query: Option<&str>) -> Option<String> {
    let uri: axum::http::Uri = format!("/?{}", query?).parse().ok()?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// `GET /?token=T`: a valid token sets the cookie and redirects to the page without it.
fn dashboard_login(auth: &Auth, token: &str) -> Response {
    if !auth.accepts(token.as_bytes()) {
        return dashboard_refusal();
    }
    // The token passed the character check of `Auth::new`, so it is a valid header value.
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// 401 for the dashboard, as a page a person can read.
fn dashboard_refusal() -> Response {
    let page = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>afs: token \
                required</title></head><body><h1>401: token required</h1><p>This dashboard needs \
                a token. Open <code>/?token=YOUR_TOKEN</code> once; a cookie keeps you signed \
                in.</p></body></html>";
    let mut response = (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"afs\""),
    );
    response
}

/// Whether a method writes (for the route table's sanity test).
#[cfg(test)]
pub(super) fn writes(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    method == Method::POST || method == Method::PUT || method == Method::DELETE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn tokens_are_checked() {
        let auth = Auth::new(&["s3cret".into(), "other-token".into()], false, "t", "p").unwrap();
        let ok = |h: &HeaderMap, cookie: bool| auth.check(h, cookie).is_ok();
        assert!(ok(&headers(&[("authorization", "Bearer s3cret")]), false));
        assert!(ok(
            &headers(&[("authorization", "bearer other-token")]),
            false
        ));
        assert!(!ok(&headers(&[("authorization", "Bearer s3cre")]), false));
        assert!(!ok(&headers(&[("authorization", "Bearer s3cret2")]), false));
        assert!(!ok(&headers(&[("authorization", "Basic s3cret")]), false));
        assert!(!ok(&headers(&[]), true));
        let cookie = headers(&[("cookie", "a=b; afs_token=s3cret; c=d")]);
        assert!(ok(&cookie, true));
        assert!(!ok(&cookie, false), "a cookie is not enough for a write");
        assert!(!ok(&headers(&[("cookie", "xafs_token=s3cret")]), true));
    }

    #[test]
    fn bad_tokens_are_refused() {
        for bad in ["", "has space", "semi;colon", "quo\"te", "com,ma", "tab\t"] {
            assert!(
                Auth::new(&[bad.to_string()], false, "t", "p").is_err(),
                "{bad:?}"
            );
        }
        assert!(Auth::new(&[], true, "t", "p").is_err());
        assert!(!Auth::new(&[], false, "t", "p").unwrap().enabled());
    }

    #[test]
    fn the_token_parameter_is_decoded() {
        assert_eq!(token_param(Some("token=a%2Bb")).as_deref(), Some("a+b"));
        assert_eq!(token_param(Some("x=1")), None);
        assert_eq!(token_param(None), None);
    }
}
