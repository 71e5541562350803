/// What went wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis refused, timed out or dropped the connection. Retryable when
    /// [`QueueError::is_retryable`] says so; the runtime backs off and tries again.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    InvalidName(#[from] crate::keys::InvalidName),
    /// A stored dead letter or record that this build cannot read.
    #[error("stored data under {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    NotFound(String),
}

impl QueueError {
    /// True for failures that a later try may not see (connection lost, timeout, Redis
    /// loading or busy): the caller backs off and tries again instead of giving up.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                    )
            }
            _ => false,
        }
    }
}
