/// What went wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis refused, timed out or dropped the connection. Retryable when
    /// [`QueueError::is_retryable`] says so; the runtime backs off and tries again.
    // Not a `source`: the message already carries it, and `{:#}` would repeat it.
    #[error("redis: {0}{hint}", hint = hint(.0))]
    Redis(redis::RedisError),
    /// A Redis flag that cannot work (bad URL, unreadable or wrong certificate file): fix
    /// the configuration; the message names the flag.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    InvalidName(#[from] crate::keys::InvalidName),
    /// A stored dead letter or record that this build cannot read.
    #[error("stored data under {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    NotFound(String),
}

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

/// What to check, for the Redis failures that come from our configuration rather than from
/// Redis being away.
fn hint(e: &redis::RedisError) -> &'static str {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("UnknownIssuer") {
        " (check --redis-ca-file: it must hold the CA that signed Redis's certificate, and the URL's host must be a name in that certificate)"
    } else if text.contains("alert") || text.contains("handshake") {
        " (TLS handshake refused: does Redis require a client certificate (--redis-client-cert, --redis-client-key), and does it trust its CA?)"
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed || text.contains("WRONGPASS") {
        " (check the user and password in --redis-url)"
    } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) {
        " (the Redis ACL user lacks a command or key this needs: see README, \"Redis ACL users\")"
    } else {
        ""
    }
}

impl QueueError {
    /// True when Redis (or its TLS endpoint) refused us for a reason that retrying will not
    /// fix: a certificate it or we do not trust, a wrong password, an ACL that forbids a
    /// command or key.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Redis(e) => !hint(e).is_empty(),
            _ => false,
        }
    }

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
