//! The library's error type: what went wrong talking to the API, the filesystem or a process.

/// Errors of the process kubelet and the Service resolver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A file or process operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something in a spec or a configuration we cannot honour, with the reason.
    #[error("{0}")]
    Invalid(String),
    /// A Service has no endpoint that could take traffic.
    #[error("no ready endpoint for service {namespace}/{service}: {reason}")]
    NoEndpoint {
        namespace: String,
        service: String,
        reason: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an `io::Error` with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
