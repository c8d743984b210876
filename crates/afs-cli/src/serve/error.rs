//! Errors of the HTTP API: a status, a machine-readable kind, a message and the field at
//! fault, sent as `{"error": ..., "kind": ..., "field": ...}`.

use afs_abtest::AbTestError;
use afs_loop::LoopError;
use afs_store::{ErrorKind, StoreError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer of the API.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// 400: a field of the request is invalid; `field` names it as the client wrote it
    /// (`quality_score`, `records[3].model`, the query parameter `since`).
    pub(super) fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        let field = field.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_input",
            message: format!("invalid {field}: {reason}"),
            field: Some(field),
        }
    }

    /// 400 without a field: the body is not JSON, or not the expected shape.
    pub(super) fn malformed(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_input",
            message: message.into(),
            field: None,
        }
    }

    /// 401: a token is required and none (or a wrong one) was given.
    pub(super) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "unauthorized",
            message: message.into(),
            field: None,
        }
    }

    /// 500: something failed that is not the client's doing.
    pub(super) fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: message.into(),
            field: None,
        }
    }

    /// Any status, e.g. 413 or 404 for an unknown path.
    pub(super) fn status(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// An error of kind `kind` from a library, with its message.
    fn of_kind(kind: ErrorKind, message: String, field: Option<String>) -> Self {
        let (status, kind) = match kind {
            ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_input"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::Database => (StatusCode::INTERNAL_SERVER_ERROR, "database"),
            ErrorKind::Io => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(%message, "request failed");
        }
        ApiError {
            status,
            kind,
            message,
            field,
        }
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(super) fn status_code(&self) -> StatusCode {
        self.status
    }
}

/// The request's name of a store field (`unit`, not `unit_id`): the record parser's.
pub(super) use crate::record_json::key_of as api_field;

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::InvalidInput { field, reason } => {
                ApiError::invalid(api_field(field), reason)
            }
            StoreError::InvalidBatchRecord { index, source } => match *source {
                StoreError::InvalidInput { field, reason } => {
                    ApiError::invalid(format!("records[{index}].{}", api_field(field)), reason)
                }
                other => {
                    ApiError::of_kind(other.kind(), format!("records[{index}]: {other}"), None)
                }
            },
            other => ApiError::of_kind(other.kind(), other.to_string(), None),
        }
    }
}

impl From<AbTestError> for ApiError {
    fn from(err: AbTestError) -> Self {
        match err {
            AbTestError::Store(e) => e.into(),
            AbTestError::InvalidInput { field, reason } => ApiError::invalid(field, reason),
            other => ApiError::of_kind(other.kind(), other.to_string(), None),
        }
    }
}

impl From<LoopError> for ApiError {
    fn from(err: LoopError) -> Self {
        match err {
            LoopError::Store(e) => e.into(),
            LoopError::AbTest(e) => e.into(),
            other => match other.kind() {
                Some(kind) => ApiError::of_kind(kind, other.to_string(), None),
                None => ApiError::internal(other.to_string()),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.message,
            "kind": self.kind,
            "field": self.field,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot carry another
            // request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"afs\""),
            );
        }
        response
    }
}
