//! What agentfleet's end-to-end tests (`tests/`) and its benchmark (`crates/bench`) both
//! need to run real processes against a real Redis: a private `redis-server`, the
//! workspace's binaries, free loopback ports, temporary directories, polling, and scratch
//! namespaces that are deleted when they go out of scope.
//!
//! One copy of each, so that the tests and the bench cannot drift apart in how they start
//! Redis or clean up after themselves. Functions return typed errors (the bench runs inside
//! the production CLI and must not panic); the few panicking conveniences are marked and
//! are for tests only. Redis key names stay in `crates/queue`: namespaces are scanned with
//! [`Namespace::key_patterns`](agentfleet_queue::Namespace::key_patterns).
#![forbid(unsafe_code)]

mod namespace;
mod process;
mod redis_server;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use namespace::{
    ScratchNamespace, all_namespace_keys, delete_namespace_keys, namespace_keys, scratch_name,
};
pub use process::{find_bin, stop_process};
pub use redis_server::{PrivateRedis, RedisOptions, redis_server_path};

/// Why a test or bench fixture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Queue(#[from] agentfleet_queue::QueueError),
    #[error(transparent)]
    Name(#[from] agentfleet_queue::InvalidName),
    #[error("{} is missing: run `cargo build --release --workspace --bins` first", .0.display())]
    MissingBinary(PathBuf),
    #[error("private redis-server: {0}")]
    RedisServer(String),
}

impl TestkitError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// `n` random lowercase letters and digits: unique names for namespaces and directories.
pub fn random_suffix(n: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(n)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A free loopback port (bound then released: good enough for one machine).
pub fn free_port() -> Result<u16, TestkitError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(TestkitError::io("no free loopback port"))
}

/// A fresh directory `agentfleet-<prefix>-<random>` under the system's temp dir; the caller
/// removes it.
pub fn tempdir(prefix: &str) -> Result<PathBuf, TestkitError> {
    let dir = std::env::temp_dir().join(format!("agentfleet-{prefix}-{}", random_suffix(10)));
    std::fs::create_dir_all(&dir)
        .map_err(TestkitError::io(format!("cannot create {}", dir.display())))?;
    Ok(dir)
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; true if it did.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}
