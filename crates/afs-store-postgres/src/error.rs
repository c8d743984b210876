//! Mapping the driver's errors to the store's kinds, and URLs safe to print.

use afs_store::StoreError;
use postgres::error::SqlState;

/// Whether `text` names a PostgreSQL database (`postgres://` or `postgresql://`) rather than
/// a file.
pub fn is_postgres_url(text: &str) -> bool {
    let lower = text.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}://{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &rest[at..]
                ),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// Whether a driver error means the server is gone or unreachable (retrying later may work).
pub(crate) fn is_unavailable(err: &postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        return [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_FAILURE,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::QUERY_CANCELED,
        ]
        .contains(code);
    }
    // No SQLSTATE: an I/O error, a timeout or a closed socket.
    std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>())
        || err.to_string().contains("timed out")
        || err.to_string().contains("connection closed")
}

/// Whether a driver error is a serialisation failure or a deadlock: the transaction
/// committed nothing and may be run again.
pub(crate) fn is_retryable(err: &postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Wraps a driver error: [`StoreError::Unavailable`] when the server is gone, else
/// [`StoreError::Database`]. `context` says what the store was doing.
pub(crate) fn db(context: impl Into<String>, err: postgres::Error) -> StoreError {
    let context = context.into();
    if is_unavailable(&err) {
        StoreError::Unavailable {
            context,
            source: Box::new(err),
        }
    } else {
        StoreError::Database {
            context,
            source: Box::new(err),
        }
    }
}

/// Wraps a pool error (no connection within the timeout) as [`StoreError::Unavailable`].
pub(crate) fn pool(context: impl Into<String>, err: r2d2::Error) -> StoreError {
    StoreError::Unavailable {
        context: context.into(),
        source: Box::new(err),
    }
}

/// A closure-friendly form of [`db`]: `.map_err(dbe("reading runs"))`.
pub(crate) fn dbe(context: &str) -> impl FnOnce(postgres::Error) -> StoreError + '_ {
    move |err| db(context, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised_and_redacted() {
        assert!(is_postgres_url("postgres://h/db"));
        assert!(is_postgres_url("PostgreSQL://h/db"));
        assert!(!is_postgres_url("afs.db"));
        assert!(!is_postgres_url("./postgres://x"));
        assert_eq!(
            redact_url("postgres://afs:s3cret@db.example:5432/afs"),
            "postgres://afs:***@db.example:5432/afs"
        );
        assert_eq!(
            redact_url("postgres://afs@db.example/afs?sslmode=disable"),
            "postgres://afs@db.example/afs?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://db.example/afs"),
            "postgres://db.example/afs"
        );
    }
}
