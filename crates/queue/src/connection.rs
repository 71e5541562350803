use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::QueueError;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Longest wait for one reply. Requests carry bounded batches (see [`crate::Queue`]'s
    /// chunk sizes) so that this bound holds for the largest of them with a wide margin.
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A multiplexed, self-reconnecting connection. It connects lazily: a worker started while
/// Redis is down comes up, reports not ready, and connects when Redis answers.
pub fn connect(url: &str, options: &ConnectOptions) -> Result<ConnectionManager, QueueError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(options.response_timeout))
        .set_connection_timeout(Some(options.connect_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    Ok(client.get_connection_manager_lazy(config)?)
}
