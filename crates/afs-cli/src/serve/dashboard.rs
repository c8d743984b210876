//! `GET /`: the live dashboard, one page whose HTML, script and style sheet are compiled
//! into the binary. The page fetches nothing but this server's JSON API, and its Content
//! Security Policy forbids anything else.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("assets/dashboard.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// Scripts, styles and requests only from this server; no frames, forms or plugins.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page.
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// Its script.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Its style sheet.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [("html", PAGE), ("js", SCRIPT), ("css", STYLE)] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                let hits: Vec<&str> = text
                    .lines()
                    .filter(|line| line.contains(needle) && !line.contains("www.w3.org/2000/svg"))
                    .collect();
                assert!(
                    hits.is_empty(),
                    "dashboard.{name} refers to {needle}: {hits:?}"
                );
            }
        }
        assert!(PAGE.contains("/assets/dashboard.js") && PAGE.contains("/assets/dashboard.css"));
    }
}
