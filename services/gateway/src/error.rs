//! What can go wrong in the gateway: at start-up ([`GatewayError`]) and with one request
//! ([`ApiError`]: every failure becomes a JSON `{"error": "..."}` with a status that says whose
//! fault it is).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// Why the gateway could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// NATS could not be reached or refused a declaration.
    #[error("setting up NATS at start-up")]
    Store(#[from] dme_storage::StoreError),
    /// The HTTP address could not be bound.
    #[error("cannot serve HTTP on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while serving.
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    /// The spool folder could not be opened (created, swept or locked).
    #[error("opening the spool folder")]
    Spool(#[source] std::io::Error),
    /// The JSON API's micro service or one of its endpoints could not be registered.
    #[error("starting the JSON API over NATS")]
    NatsApi(#[source] async_nats::Error),
    /// The HTTPS certificate or key cannot be used.
    #[error("loading the HTTPS certificate and key")]
    Tls(#[source] crate::tls::TlsError),
}

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such music, job or file (404).
    #[error("{0}")]
    NotFound(String),
    /// A track id that is not one of the song's (405, as the API contract says).
    #[error("{0}")]
    TrackNotFound(String),
    /// A method the path does not take (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Same id, different content (409).
    #[error("{0}")]
    Conflict(String),
    /// Upload over the size or duration limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Not audio, or a codec we cannot decode (415).
    #[error("{0}")]
    Unsupported(String),
    /// The request body paused too long or took too long (408); the connection is closed.
    #[error("{0}")]
    RequestTimeout(String),
    /// A byte range outside the file (416).
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// This client has too much work in flight (429, with `Retry-After`).
    #[error("{reason}")]
    TooManyRequests {
        /// Why, and what the limit is.
        reason: String,
        /// Seconds after which a retry may succeed.
        retry_after_s: u64,
    },
    /// The store is too full for new work (507, with `Retry-After`): what is stored is still
    /// served.
    #[error("{reason}")]
    InsufficientStorage {
        /// Why, and how full the store is.
        reason: String,
        /// Seconds after which a retry may succeed.
        retry_after_s: u64,
    },
    /// No separator has registered a model yet (503).
    #[error("{0}")]
    Unavailable(String),
    /// Our fault (500): the cause is logged, the client sees an opaque message.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A handler panicked (500): the panic is logged where it is caught, the client sees the
    /// same opaque message as for any internal error.
    #[error("internal error")]
    Panicked,
}

/// Seconds a client refused for want of room is asked to wait (`Retry-After`): long enough that
/// clients do not hammer the gateway, short enough to catch the moment a song finishes.
pub(crate) const RETRY_AFTER_S: u64 = 60;

impl From<dme_storage::StoreError> for ApiError {
    fn from(e: dme_storage::StoreError) -> Self {
        match e {
            dme_storage::StoreError::Full { .. } => {
                tracing::warn!(error = %e, "a write found the store full");
                ApiError::InsufficientStorage {
                    reason: "the store is full: no new song can be stored now; songs already \
                             stored can still be downloaded"
                        .into(),
                    retry_after_s: RETRY_AFTER_S,
                }
            }
            // NATS down or restarting: the client may retry (the cause is logged).
            dme_storage::StoreError::Nats { .. } | dme_storage::StoreError::Unreachable { .. } => {
                tracing::warn!(error = %dme_storage::error_chain(&e), "the store is unreachable");
                ApiError::Unavailable(
                    "the message broker is unreachable: retry in a few seconds".into(),
                )
            }
            e => ApiError::Internal(e.into()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TrackNotFound(_) | ApiError::MethodNotAllowed(_) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            let cause = dme_storage::error_chain(cause.as_ref());
            tracing::error!(error = cause, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::TooManyRequests { retry_after_s, .. }
        | ApiError::InsufficientStorage { retry_after_s, .. } = self
        {
            response.insert_header((actix_web::http::header::RETRY_AFTER, *retry_after_s));
        }
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}
