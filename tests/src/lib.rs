//! Helpers for agentfleet's end-to-end tests: real binaries, real Redis, real processes.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// Path of one of the workspace's binaries (`agentfleet`, `reasoning-worker`,
/// `synthesis-worker`), built by `cargo build --workspace --bins` before the tests run
/// (`make test` does that).
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does) before the tests",
        path.display()
    );
    path
}

/// The Redis the tests use: `REDIS_URL`, or the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}
