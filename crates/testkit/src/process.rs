//! The workspace's binaries, and stopping processes this process started.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::TestkitError;

/// Path of one of the workspace's binaries (`agentfleet`, `reasoning-worker`,
/// `bench-noop-worker`, ...): next to the running executable (`agentfleet bench` in
/// target/<profile>), or one level up when that is a test in target/<profile>/deps.
/// They must have been built (`cargo build --workspace --bins`; `make test` and `make bench`
/// do).
pub fn find_bin(name: &str) -> Result<PathBuf, TestkitError> {
    let exe = std::env::current_exe().map_err(TestkitError::io("cannot find this executable"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| TestkitError::MissingBinary(PathBuf::from(name)))?;
    if dir.file_name().is_some_and(|n| n == "deps")
        && let Some(up) = dir.parent()
    {
        dir = up;
    }
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(TestkitError::MissingBinary(path))
    }
}

/// SIGTERM, then SIGKILL if the process is still there after `grace`. Only ever aimed at a
/// child this process started, by its PID.
pub fn stop_process(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
