//! A Redis Cluster connection that replaces itself when redis-rs's stops answering.
//!
//! Why it exists: redis-rs's async cluster connection (1.8.1, and 2.0.0-rc.2 has the same
//! code) can deadlock for good during a failover. Its slot refresh waits for the write half of
//! the lock over its connection map, while a request that was already granted the read half
//! is never polled again, because requests are only polled when no refresh is running. From
//! then on every request through that connection times out at the overall bound, forever
//! (reproduced: a master SIGKILLed while ~2,000 single-slot requests were in flight; the
//! failover test in `tests/tests/cluster.rs` hit it every run). Nothing outside the crate can
//! unstick it, but a new connection made from the same client works at once.
//!
//! So each connection has a watchdog: a background task that sends `PING` through it every
//! [`PROBE_EVERY`]. A `PING` that gets no answer within the probe timeout (above what a
//! healthy slot refresh can take) means the connection is stuck, and it is replaced by a new
//! one from the same client. Requests already waiting on the stuck connection still time out
//! at their bound; later ones use the new connection. A stuck connection's own background
//! task cannot be stopped from outside: it keeps its sockets (one per node) until the process
//! exits, which the replacement's warning says. The watchdog costs one `PING` a second per
//! connection and ends when the last handle is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;

/// How often the watchdog probes the connection.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A cloneable handle: every clone shares the current connection and its watchdog.
#[derive(Clone)]
pub struct ClusterLink {
    shared: Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    config: ClusterConfig,
    /// Longest a `PING` may wait before the connection is judged stuck: above a healthy
    /// slot refresh (which connects to every node, each within the connect timeout).
    probe_timeout: Duration,
    current: RwLock<Generation>,
    /// Whether the watchdog was started (on first use, inside a tokio runtime).
    watched: AtomicBool,
}

#[derive(Clone)]
struct Generation {
    number: u64,
    conn: ClusterConnection,
}

impl ClusterLink {
    pub(crate) fn new(
        client: ClusterClient,
        config: ClusterConfig,
        probe_timeout: Duration,
    ) -> Self {
        let conn = client.get_pending_async_connection_with_config(config.clone());
        Self {
            shared: Arc::new(Shared {
                client,
                config,
                probe_timeout,
                current: RwLock::new(Generation { number: 0, conn }),
                watched: AtomicBool::new(false),
            }),
        }
    }

    /// The connection to send a request on (starting the watchdog on first use).
    pub(crate) fn conn(&self) -> ClusterConnection {
        if !self.shared.watched.load(Ordering::Relaxed) {
            self.start_watchdog();
        }
        self.shared.generation().conn
    }

    fn start_watchdog(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.shared.watched.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(watchdog(Arc::downgrade(&self.shared)));
    }
}

impl Shared {
    fn generation(&self) -> Generation {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the connection of generation `stuck`.
    fn replace(&self, stuck: u64) {
        let mut current = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.number != stuck {
            return;
        }
        let conn = self
            .client
            .get_pending_async_connection_with_config(self.config.clone());
        *current = Generation {
            number: stuck + 1,
            conn,
        };
        tracing::warn!(
            replacements = stuck + 1,
            probe_timeout_ms = self.probe_timeout.as_millis() as u64,
            "Redis Cluster connection stopped answering (a redis-rs deadlock seen during failovers); replaced it with a new one, the stuck one keeps its sockets until exit"
        );
    }
}

/// Probes the connection every [`PROBE_EVERY`] until the last handle is gone.
async fn watchdog(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(link) = shared.upgrade() else {
            return;
        };
        let generation = link.generation();
        let probe_timeout = link.probe_timeout;
        // Not holding the link while waiting lets the last handle go.
        drop(link);
        let mut conn = generation.conn;
        let answered = tokio::time::timeout(
            probe_timeout,
            redis::cmd("PING").query_async::<redis::Value>(&mut conn),
        )
        .await
        .is_ok();
        if !answered && let Some(link) = shared.upgrade() {
            link.replace(generation.number);
        }
    }
}
