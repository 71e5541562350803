//! A private `redis-server` on a free loopback port, for tests that stop and restart Redis
//! or change its users, and for a bench that must not share a Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{TestkitError, free_port, tempdir};

/// How a [`PrivateRedis`] runs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// The default user's password (`requirepass`), if any.
    pub password: Option<String>,
    /// More `redis-server` arguments, e.g. `["--enable-debug-command", "local"]`.
    pub extra_args: Vec<String>,
    /// AOF with `fsync always`, so that the server can be killed and restarted without
    /// losing an acknowledged write (fault tests); without it, no persistence at all
    /// (the bench: nothing on disk competes with what it measures).
    pub durable: bool,
}

/// A `redis-server` this process started, in a temporary directory; killed (SIGKILL) and
/// its directory removed on drop, so that a failure or Ctrl-C leaves nothing behind.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    options: RedisOptions,
}

impl PrivateRedis {
    /// Starts a server and waits (up to 10 s) until it answers PING.
    pub fn launch(options: RedisOptions) -> Result<Self, TestkitError> {
        let mut redis = Self {
            child: None,
            port: free_port()?,
            dir: tempdir("redis")?,
            options,
        };
        redis.try_restart()?;
        Ok(redis)
    }

    /// Tests: a durable server. Panics if it cannot start.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Tests: a durable server with more arguments. Panics if it cannot start.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::test_launch(RedisOptions {
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            durable: true,
            ..RedisOptions::default()
        })
    }

    /// Tests: a durable server whose default user needs `password`. Panics if it cannot
    /// start.
    pub fn start_with_password(password: Option<&str>) -> Self {
        Self::test_launch(RedisOptions {
            password: password.map(str::to_owned),
            durable: true,
            ..RedisOptions::default()
        })
    }

    fn test_launch(options: RedisOptions) -> Self {
        match Self::launch(options) {
            Ok(redis) => redis,
            Err(e) => panic!("{e}"),
        }
    }

    /// Tests: a connection to this server, as its administrator. Panics if it fails.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("private redis reachable")
    }

    /// The administrator's URL (the default user, with its password if it has one).
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The URL of another user of this server.
    pub fn user_url(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Runs one command as the administrator, e.g. `ACL SETUSER ...`.
    pub fn admin(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection()?;
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    /// Tests: starts the server again, with the data it had. Panics if it cannot.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// Starts the server (again, with the data it had when durable) and waits up to 10 s
    /// for its PING.
    pub fn try_restart(&mut self) -> Result<(), TestkitError> {
        let persistence: &[&str] = if self.options.durable {
            &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]
        } else {
            &["--appendonly", "no", "--save", ""]
        };
        let child = Command::new(redis_server_path())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence)
            .args(
                self.options
                    .password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
            )
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(TestkitError::io("cannot start redis-server"))?;
        let url = self.url();
        let child = self.child.insert(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let pong = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(TestkitError::RedisServer(format!(
                    "exited at start ({status})"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(TestkitError::RedisServer(
            "did not answer PING within 10 s".to_owned(),
        ))
    }

    /// Stops the server abruptly (SIGKILL; a durable server's AOF holds every acknowledged
    /// write).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `redis-server` is: the usual system directories, else whatever `PATH` finds.
pub fn redis_server_path() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join("redis-server");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("redis-server")
}
