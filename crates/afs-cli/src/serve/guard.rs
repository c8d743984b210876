//! Who may call: the checks every request passes before any route sees it, against web
//! pages in a browser on this machine (cross-site writes) and against DNS rebinding.
//!
//! The layer wraps the whole router (the fallbacks too), so no route can be left out:
//! 1. **Host.** While the rule is on (the server is bound to a loopback address, or
//!    `allowed_hosts` is set), a request is served only when its `Host` is a loopback name
//!    or address (`localhost`, `*.localhost`, `127.x.y.z`, `[::1]`, any port), the address
//!    the server is bound to, or one of `allowed_hosts`; otherwise 421. A DNS-rebinding
//!    page talks to this server under its own host name, so it is refused here. Bound to
//!    another address (`0.0.0.0`) the operator exposes the service on purpose, under names
//!    afs cannot know, and tokens protect it: the rule is off unless `allowed_hosts` is set.
//! 2. **Origin.** An unsafe request (any method but GET, HEAD and OPTIONS) with an `Origin`
//!    header is refused (403) unless that origin is the server's own (its host and port are
//!    those of the `Host` header) or one of `allowed_origins`. Without `Origin`, a request
//!    that says `Sec-Fetch-Site: cross-site` is refused too. Requests from programs (curl,
//!    SDKs) send neither header and pass.
//! 3. **Content type.** A request to a route that takes a body (POST, PUT, PATCH) must say
//!    `Content-Type: application/json` (parameters such as `; charset=utf-8` allowed, and
//!    `application/*+json`); otherwise 415. A browser page can send `text/plain` or a form
//!    to any site without asking, but not JSON.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ROUTES;
use super::error::ApiError;
use super::AppState;

/// Why the guard refused a request (a label of `afs_http_requests_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The `Host` is not one this server answers to (421).
    Host,
    /// A cross-origin unsafe request (403).
    Origin,
    /// A body that is not JSON (415).
    ContentType,
}

impl Refusal {
    /// Every reason, in the order of the metric's samples.
    pub(super) const ALL: [Refusal; 3] = [Refusal::Host, Refusal::Origin, Refusal::ContentType];

    /// The reason as the metric's label value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::ContentType => "content_type",
        }
    }
}

/// The guard's settings: which hosts and origins are accepted.
#[derive(Debug)]
pub(super) struct Guard {
    /// Whether the `Host` rule is on.
    check_host: bool,
    /// The bound address, accepted as a host when it is not unspecified (`0.0.0.0`).
    bound: Option<String>,
    /// Extra host names, normalised by [`parse_allowed_host`].
    allowed_hosts: Vec<String>,
    /// Extra origins, normalised by [`parse_allowed_origin`].
    allowed_origins: Vec<String>,
}

impl Guard {
    /// The guard of a server bound to `addr`. `allowed_hosts` and `allowed_origins` are
    /// already normalised (by [`parse_allowed_host`] and [`parse_allowed_origin`]).
    pub(super) fn new(
        addr: SocketAddr,
        allowed_hosts: Vec<String>,
        allowed_origins: Vec<String>,
    ) -> Self {
        let ip = addr.ip();
        Guard {
            check_host: ip.is_loopback() || !allowed_hosts.is_empty(),
            bound: (!ip.is_unspecified()).then(|| host_of_ip(ip)),
            allowed_hosts,
            allowed_origins,
        }
    }

    /// Whether the `Host` rule is on.
    pub(super) fn checks_host(&self) -> bool {
        self.check_host
    }

    /// Whether `host` (lower case, without port) is served.
    fn host_allowed(&self, host: &str) -> bool {
        is_loopback_host(host)
            || self.bound.as_deref() == Some(host)
            || self.allowed_hosts.iter().any(|h| h == host)
    }

    /// Checks a request: `Ok` to let it through, the refusal and its answer otherwise.
    fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refused> {
        let host = headers
            .get(header::HOST)
            .map(|v| v.to_str().ok().and_then(split_authority));
        if self.check_host {
            match &host {
                // HTTP/1.0 without Host: not a browser, which always sends one.
                None => {}
                Some(Some((name, _))) if self.host_allowed(name) => {}
                Some(_) => {
                    return Err(Refused::new(
                        Refusal::Host,
                        StatusCode::MISDIRECTED_REQUEST,
                        "misdirected_request",
                        "this server does not answer to that Host (it is bound to loopback; \
                         add the name to allowed_hosts in [serve] or --allowed-host to serve \
                         it)",
                    ));
                }
            }
        }
        if !is_safe(method) {
            let origin = headers.get(header::ORIGIN).map(|v| v.to_str().ok());
            let own = host.flatten();
            let allowed = match origin {
                Some(Some(origin)) => {
                    same_origin(origin, own.as_ref())
                        || self
                            .allowed_origins
                            .iter()
                            .any(|o| Some(o.as_str()) == normalize_origin(origin).as_deref())
                }
                Some(None) => false,
                None => !headers
                    .get("sec-fetch-site")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")),
            };
            if !allowed {
                return Err(Refused::new(
                    Refusal::Origin,
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "cross-origin writes are refused (the Origin is neither this server nor \
                     one of allowed_origins in [serve])",
                ));
            }
            let takes_body = [Method::POST, Method::PUT, Method::PATCH].contains(method)
                && ROUTES.iter().any(|r| r.method == method && r.path == path);
            if takes_body && !is_json(headers) {
                return Err(Refused::new(
                    Refusal::ContentType,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the body must be JSON, sent with `Content-Type: application/json`",
                ));
            }
        }
        Ok(())
    }
}

/// A refused request: why, and its answer.
struct Refused {
    why: Refusal,
    error: ApiError,
}

impl Refused {
    fn new(why: Refusal, status: StatusCode, kind: &'static str, message: &str) -> Self {
        Refused {
            why,
            error: ApiError::status(status, kind, message),
        }
    }
}

/// Middleware: lets a request through when it passes the checks of the module
/// documentation; answers 421, 403 or 415 otherwise.
pub(super) async fn check(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match state
        .guard
        .check(request.method(), request.uri().path(), request.headers())
    {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            state.metrics.refused(refused.why);
            refused.error.into_response()
        }
    }
}

/// GET, HEAD and OPTIONS change nothing; every other method may.
fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD || method == Method::OPTIONS
}

/// Whether the request says its body is JSON: `application/json` or `application/*+json`,
/// with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && !sub.contains('/'))
}

/// A host as it appears in `Host` and `Origin`: an IPv6 address in brackets.
fn host_of_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The host (lower case, without a trailing dot) and port of `host[:port]`; `None` when it
/// is not one (user info, a path, an empty host).
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    if text.contains('@') {
        return None;
    }
    let authority = Authority::from_str(text).ok()?;
    if authority.as_str() != text {
        return None;
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    // A port that is there but is not a number is not an authority a browser sends.
    if authority.as_str().len() > authority.host().len() && authority.port_u16().is_none() {
        return None;
    }
    Some((host, authority.port_u16()))
}

/// Whether `host` (lower case) is a loopback name or address: `localhost` and its
/// subdomains (which browsers resolve to loopback themselves), `127.0.0.0/8`, `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            host.starts_with('[')
                && (v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        }
        Err(_) => false,
    }
}

/// An origin, `scheme://host[:port]`, split into scheme, host and port (the scheme's
/// default when not written); `None` for `null` and anything else that is not one.
fn split_origin(origin: &str) -> Option<(&'static str, String, u16)> {
    let lower = origin.trim().to_ascii_lowercase();
    let (scheme, default_port, rest) = if let Some(rest) = lower.strip_prefix("http://") {
        ("http", 80, rest)
    } else if let Some(rest) = lower.strip_prefix("https://") {
        ("https", 443, rest)
    } else {
        return None;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return None;
    }
    let (host, port) = split_authority(rest)?;
    Some((scheme, host, port.unwrap_or(default_port)))
}

/// An origin in the form `allowed_origins` keeps: `scheme://host[:port]`, lower case, the
/// default port left out.
fn normalize_origin(origin: &str) -> Option<String> {
    let (scheme, host, port) = split_origin(origin)?;
    let default = if scheme == "https" { 443 } else { 80 };
    Some(if port == default {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    })
}

/// Whether `origin` is the request's own: its host and port are those of the `Host`
/// header (a `Host` without a port means the origin scheme's default port, as a browser
/// writes it).
fn same_origin(origin: &str, own: Option<&(String, Option<u16>)>) -> bool {
    let (Some((_, host, port)), Some((own_host, own_port))) = (split_origin(origin), own) else {
        return false;
    };
    let default = if origin.trim().to_ascii_lowercase().starts_with("https://") {
        443
    } else {
        80
    };
    host == *own_host && port == own_port.unwrap_or(default)
}

/// Checks and normalises an `allowed_hosts` entry: a host name or IP address without a
/// port (lower case; an IPv6 address in brackets).
pub(crate) fn parse_allowed_host(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a host name must not be empty".into());
    }
    if let Ok(ip) = text
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(text)
        .parse::<IpAddr>()
    {
        return Ok(host_of_ip(ip));
    }
    let host = text.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid {
        return Err(format!(
            "{text:?} is not a host name or IP address (no scheme, port or path: e.g. \
             afs.example.com)"
        ));
    }
    Ok(host)
}

/// Checks and normalises an `allowed_origins` entry: `http://host[:port]` or
/// `https://host[:port]`, as a browser sends it in `Origin`.
pub(crate) fn parse_allowed_origin(text: &str) -> Result<String, String> {
    normalize_origin(text).ok_or_else(|| {
        format!(
            "{text:?} is not an origin: scheme, host and optional port, e.g. \
             https://dashboard.example.com or http://localhost:3000"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn loopback() -> Guard {
        Guard::new("127.0.0.1:8080".parse().unwrap(), Vec::new(), Vec::new())
    }

    fn refusal(guard: &Guard, method: Method, path: &str, h: &[(&'static str, &str)]) -> String {
        match guard.check(&method, path, &headers(h)) {
            Ok(()) => "ok".into(),
            Err(r) => r.why.as_str().into(),
        }
    }

    #[test]
    fn loopback_hosts_are_served_and_others_are_not() {
        let g = loopback();
        for host in [
            "127.0.0.1:8080",
            "localhost:9",
            "LOCALHOST",
            "localhost.",
            "app.localhost:1",
            "127.8.9.10",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert_eq!(
                refusal(&g, Method::GET, "/", &[("host", host)]),
                "ok",
                "{host}"
            );
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::2]:8080",
            "10.0.0.1:8080",
            "user@127.0.0.1",
            "",
        ] {
            assert_eq!(
                refusal(&g, Method::GET, "/", &[("host", host)]),
                "host",
                "{host}"
            );
        }
        assert_eq!(
            refusal(&g, Method::GET, "/", &[]),
            "ok",
            "no Host: HTTP/1.0"
        );
        let named = Guard::new(
            "127.0.0.1:8080".parse().unwrap(),
            vec![parse_allowed_host("AFS.Example.com").unwrap()],
            Vec::new(),
        );
        assert_eq!(
            refusal(
                &named,
                Method::GET,
                "/",
                &[("host", "afs.example.com:8080")]
            ),
            "ok"
        );
    }

    #[test]
    fn the_host_rule_is_off_on_other_addresses_unless_hosts_are_listed() {
        let open = Guard::new("0.0.0.0:8080".parse().unwrap(), Vec::new(), Vec::new());
        assert!(!open.checks_host());
        assert_eq!(
            refusal(&open, Method::GET, "/", &[("host", "anything:1")]),
            "ok"
        );
        let listed = Guard::new(
            "0.0.0.0:8080".parse().unwrap(),
            vec!["afs.internal".into()],
            Vec::new(),
        );
        assert_eq!(
            refusal(&listed, Method::GET, "/", &[("host", "anything:1")]),
            "host"
        );
        assert_eq!(
            refusal(&listed, Method::GET, "/", &[("host", "afs.internal:8080")]),
            "ok"
        );
        let bound = Guard::new(
            "10.1.2.3:8080".parse().unwrap(),
            vec!["afs.internal".into()],
            Vec::new(),
        );
        assert_eq!(
            refusal(&bound, Method::GET, "/", &[("host", "10.1.2.3:8080")]),
            "ok",
            "the bound address is served"
        );
    }

    #[test]
    fn cross_origin_writes_are_refused() {
        let g = loopback();
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:8080");
        let post = |h: &[(&'static str, &str)]| refusal(&g, Method::POST, "/v1/usage", h);
        assert_eq!(post(&[host, json]), "ok", "no Origin: curl, SDKs");
        assert_eq!(
            post(&[host, json, ("origin", "http://127.0.0.1:8080")]),
            "ok"
        );
        assert_eq!(
            post(&[
                ("host", "localhost:8080"),
                json,
                ("origin", "http://localhost:8080")
            ]),
            "ok"
        );
        assert_eq!(
            post(&[("host", "localhost"), json, ("origin", "http://localhost")]),
            "ok"
        );
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:8081",
            "http://localhost:8080",
            "null",
            "file://",
            "http://127.0.0.1:8080/path",
        ] {
            assert_eq!(
                post(&[host, json, ("origin", origin)]),
                "origin",
                "{origin}"
            );
        }
        assert_eq!(
            post(&[host, json, ("sec-fetch-site", "cross-site")]),
            "origin"
        );
        assert_eq!(post(&[host, json, ("sec-fetch-site", "none")]), "ok");
        assert_eq!(
            refusal(
                &g,
                Method::DELETE,
                "/v1/usage",
                &[host, ("origin", "http://evil.example")]
            ),
            "origin"
        );
        assert_eq!(
            refusal(
                &g,
                Method::GET,
                "/v1/stats",
                &[host, ("origin", "http://evil.example")]
            ),
            "ok",
            "reads are not writes"
        );
        let allowed = Guard::new(
            "127.0.0.1:8080".parse().unwrap(),
            Vec::new(),
            vec![parse_allowed_origin("https://Dash.example.com:443/").unwrap()],
        );
        assert_eq!(
            refusal(
                &allowed,
                Method::POST,
                "/v1/feedback",
                &[
                    host,
                    json,
                    ("origin", "https://dash.example.com"),
                    ("sec-fetch-site", "cross-site")
                ]
            ),
            "ok"
        );
    }

    #[test]
    fn bodies_must_be_json() {
        let g = loopback();
        let host = ("host", "127.0.0.1:8080");
        let post = |ct: Option<&str>| {
            let mut h = vec![host];
            if let Some(ct) = ct {
                h.push(("content-type", ct));
            }
            refusal(&g, Method::POST, "/v1/usage", &h)
        };
        assert_eq!(post(Some("application/json")), "ok");
        assert_eq!(post(Some("Application/JSON; charset=utf-8")), "ok");
        assert_eq!(post(Some("application/merge-patch+json")), "ok");
        for bad in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            Some("text/json"),
        ] {
            assert_eq!(post(bad), "content_type", "{bad:?}");
        }
        assert_eq!(
            refusal(&g, Method::POST, "/v1/stats", &[host]),
            "ok",
            "not a route that takes a body: 405 comes later"
        );
    }

    #[test]
    fn allowed_entries_are_checked_and_normalised() {
        assert_eq!(
            parse_allowed_host(" AFS.example.com. ").unwrap(),
            "afs.example.com"
        );
        assert_eq!(parse_allowed_host("::1").unwrap(), "[::1]");
        assert_eq!(
            parse_allowed_host("[2001:db8::1]").unwrap(),
            "[2001:db8::1]"
        );
        for bad in ["", "afs.example.com:8080", "http://afs", "a/b", "a b"] {
            assert!(parse_allowed_host(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_allowed_origin("HTTP://LocalHost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(
            parse_allowed_origin("http://a.example:80").unwrap(),
            "http://a.example"
        );
        for bad in [
            "",
            "null",
            "a.example",
            "ftp://a.example",
            "http://a/b",
            "http://",
        ] {
            assert!(parse_allowed_origin(bad).is_err(), "{bad:?}");
        }
    }
}
