//! Helpers for agentfleet's end-to-end tests: real binaries, real Redis, real processes.
//!
//! Every test gets its own namespace (so tests share one Redis without seeing each other)
//! and deletes its keys when it ends.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfleet_job::{TaskRecord, TaskStatus};
use agentfleet_queue::RedisArgs;
use agentfleet_testkit::{ScratchNamespace, all_namespace_keys, redis_server_path};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use agentfleet_testkit::{PrivateRedis, RedisOptions, wait_until};

/// Path of one of the workspace's binaries (`agentfleet`, `reasoning-worker`,
/// `synthesis-worker`), built by `cargo build --workspace --bins` before the tests run
/// (`make test` does that). Panics with the reason when it is missing.
pub fn bin(name: &str) -> PathBuf {
    agentfleet_testkit::find_bin(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The Redis the tests use: `REDIS_URL`, or the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Seed nodes of the Redis Cluster the tests run on instead (`make test` runs the queue tests
/// a second time with it set; see scripts/redis-cluster.sh), if any.
pub const CLUSTER_ENV: &str = "AGENTFLEET_TEST_REDIS_CLUSTER";

/// How [`Fleet::new`] reaches Redis: the cluster of [`CLUSTER_ENV`] when set, else
/// [`redis_url`].
pub fn redis_args() -> RedisArgs {
    match std::env::var(CLUSTER_ENV) {
        Ok(seeds) if !seeds.is_empty() => RedisArgs::cluster(seeds),
        _ => RedisArgs::plain(redis_url()),
    }
}

/// A Redis Cluster of the test's own (three masters, one replica each, from
/// scripts/redis-cluster.sh on ports `base..base+5`), for tests that break nodes; stopped and
/// removed on drop. Tests that only use a cluster share the one `make test` starts.
pub struct PrivateCluster {
    base: u16,
    /// The certificates' directory of a TLS-only cluster ([`PrivateCluster::start_tls`]).
    tls: Option<PathBuf>,
}

impl PrivateCluster {
    pub fn start(base: u16) -> Self {
        Self { base, tls: None }.started()
    }

    /// A cluster that speaks only TLS, to clients and between its nodes, with the
    /// certificates of `certs`; a client certificate is checked when one is presented.
    pub fn start_tls(base: u16, certs: &Certs) -> Self {
        Self {
            base,
            tls: Some(certs.dir.clone()),
        }
        .started()
    }

    fn started(self) -> Self {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "start a cluster on {}: {}",
            self.base,
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    fn script(&self, action: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh"))
            .arg(action)
            .env("AGENTFLEET_CLUSTER_PORT", self.base.to_string());
        if let Some(dir) = &self.tls {
            cmd.env("AGENTFLEET_CLUSTER_TLS_DIR", dir);
        }
        cmd.output().expect("run scripts/redis-cluster.sh")
    }

    /// The seed list for `--redis-url`.
    pub fn seeds(&self) -> String {
        String::from_utf8_lossy(&self.script("seeds").stdout)
            .trim()
            .to_owned()
    }

    /// How clients reach it: the seeds, and on a TLS cluster the test CA and the client
    /// certificate.
    pub fn args(&self) -> RedisArgs {
        let mut args = RedisArgs::cluster(self.seeds());
        if let Some(dir) = &self.tls {
            args.ca_file = Some(dir.join("ca.crt"));
            args.client_cert = Some(dir.join("client.crt"));
            args.client_key = Some(dir.join("client.key"));
        }
        args
    }

    /// The ports of the cluster's live masters.
    pub fn masters(&self) -> Vec<u16> {
        cluster_masters(self.base)
    }

    /// Whether every live node says `cluster_state:ok` (after a failover, the nodes agree
    /// on the new master one by one; until then some still answer `CLUSTERDOWN`).
    pub fn state_ok(&self) -> bool {
        (self.base..self.base + 6)
            .filter_map(|p| redis_cli(p, &["cluster", "info"]))
            .all(|info| info.contains("cluster_state:ok"))
    }

    /// The port of the master that owns `key`'s slot, asked of any live node.
    pub fn master_of(&self, key: &str) -> u16 {
        master_of(self.base, key)
    }

    /// Freezes the node on `port` for `how_long` (`DEBUG SLEEP`, sent from a thread of its
    /// own; returns once the node is asleep, i.e. no longer answers `PING` quickly).
    pub fn debug_sleep(&self, port: u16, how_long: Duration) {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a node URL");
        let sleeper = client.clone();
        let secs = how_long.as_secs_f64();
        std::thread::spawn(move || {
            let mut conn = sleeper.get_connection().expect("the node answers");
            let _: redis::RedisResult<()> =
                redis::cmd("DEBUG").arg("SLEEP").arg(secs).query(&mut conn);
        });
        assert!(
            wait_until(Duration::from_secs(5), || {
                let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                else {
                    return true;
                };
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                redis::cmd("PING").query::<String>(&mut conn).is_err()
            }),
            "the node on {port} fell asleep"
        );
    }

    /// Sends SIGKILL to the node on `port` (its pid from the script's pid file).
    pub fn kill9(&self, port: u16) {
        let pidfile = format!("/tmp/agentfleet-cluster-{}/redis-{port}.pid", self.base);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the node's pid file")
            .trim()
            .parse()
            .expect("a pid");
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the node");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `CLUSTER NODES` from the first of the six nodes from `base` that answers.
fn cluster_nodes(base: u16) -> String {
    (base..base + 6)
        .find_map(|p| redis_cli(p, &["cluster", "nodes"]).filter(|n| !n.is_empty()))
        .expect("a live cluster node")
}

/// Ports of the live masters of the cluster on `base..base+5`.
pub fn cluster_masters(base: u16) -> Vec<u16> {
    cluster_nodes(base)
        .lines()
        .filter(|l| {
            let flags = l.split_whitespace().nth(2).unwrap_or("");
            flags.contains("master") && !flags.contains("fail")
        })
        .filter_map(|l| {
            let addr = l.split_whitespace().nth(1)?;
            addr.split('@').next()?.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

/// The port of the master owning `key`'s slot in the cluster on `base..base+5`.
pub fn master_of(base: u16, key: &str) -> u16 {
    let port = (base..base + 6)
        .find(|p| redis_cli(*p, &["ping"]).is_some())
        .expect("a live cluster node");
    let slot: u16 = redis_cli(port, &["cluster", "keyslot", key])
        .and_then(|s| s.trim().parse().ok())
        .expect("CLUSTER KEYSLOT");
    cluster_nodes(base)
        .lines()
        .filter(|l| {
            let flags = l.split_whitespace().nth(2).unwrap_or("");
            flags.contains("master") && !flags.contains("fail")
        })
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let owns = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            owns.then(|| fields[1].split('@').next()?.rsplit(':').next()?.parse().ok())
                .flatten()
        })
        .expect("a master owns the slot")
}

/// README's `ACL SETUSER` line for `user`, for namespace `ns` with `password`: the test runs
/// exactly what README tells operators to run.
pub fn readme_acl(user: &str, ns: &str, password: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let prefix = format!("redis-cli ACL SETUSER {user} ");
    let line = readme
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("README has no `{prefix}...` line"));
    line.split_whitespace()
        .skip(1)
        .map(|w| {
            w.trim_matches('\'')
                .replace("agentfleet:", &format!("{ns}:"))
                .replace("PASSWORD", password)
        })
        .collect()
}

/// A free loopback port (panics if there is none).
pub fn free_port() -> u16 {
    agentfleet_testkit::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// One test's private slice of a Redis: a unique namespace, deleted on drop.
pub struct Fleet {
    pub namespace: String,
    pub redis_url: String,
    /// How every process of the fleet reaches Redis (URL and TLS files).
    pub redis: RedisArgs,
    /// The fleet's pipeline (`AGENTFLEET_PIPELINE` for every process), if not the default.
    pub pipeline: Option<String>,
    /// The fleet's `--shards` (`AGENTFLEET_SHARDS` for every process), if not 1.
    pub shards: Option<usize>,
    /// None on a cluster: a single-server client would reach one node of it.
    client: Option<redis::Client>,
    /// Deletes the namespace's keys when the fleet is dropped (after the workers the test
    /// holds, which it declared later and so drops first).
    _scratch: ScratchNamespace,
}

impl Fleet {
    pub fn new(test: &str) -> Self {
        Self::with(test, redis_args())
    }

    pub fn on(test: &str, redis_url: &str) -> Self {
        Self::with(test, RedisArgs::plain(redis_url))
    }

    /// A fleet whose processes reach Redis with `redis` (TLS, an ACL user...). The test's
    /// own connection (for reading keys and cleaning up) uses it too.
    pub fn with(test: &str, redis: RedisArgs) -> Self {
        let scratch = ScratchNamespace::new(&format!("t-{test}"), redis.clone())
            .expect("a valid namespace name");
        let client = (!redis.cluster).then(|| redis.client().expect("usable redis options"));
        Self {
            namespace: scratch.namespace().as_str().to_owned(),
            redis_url: redis.url.expose_secret().to_owned(),
            redis,
            pipeline: None,
            shards: None,
            client,
            _scratch: scratch,
        }
    }

    /// Runs every process of this fleet with `pipeline` (e.g. `a > b + c > d`).
    pub fn with_pipeline(mut self, pipeline: &str) -> Self {
        self.pipeline = Some(pipeline.to_owned());
        self
    }

    /// Runs every process of this fleet with `shards` shards per role's queue.
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The fleet-wide settings every process gets: the pipeline and the shard count.
    fn pipeline_env(&self) -> Vec<(&'static str, String)> {
        self.pipeline
            .iter()
            .map(|p| ("AGENTFLEET_PIPELINE", p.clone()))
            .chain(self.shards.map(|n| ("AGENTFLEET_SHARDS", n.to_string())))
            .collect()
    }

    /// The test's own Redis client (the fleet's options).
    pub fn client(&self) -> &redis::Client {
        self.client
            .as_ref()
            .expect("a single-server client for a fleet on a Redis Cluster")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("redis reachable for the tests")
    }

    /// Runs `agentfleet` with this fleet's Redis and namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[])
    }

    /// Runs `agentfleet` with extra environment variables.
    pub fn cli_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        Command::new(bin("agentfleet"))
            .args(args)
            .envs(self.redis.to_env())
            .env("AGENTFLEET_NAMESPACE", &self.namespace)
            .envs(self.pipeline_env())
            .envs(envs.iter().copied())
            .output()
            .expect("run agentfleet")
    }

    /// Runs `agentfleet`, asserts success, returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "agentfleet {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Enqueues `n` tasks; returns their ids.
    pub fn enqueue_many(&self, n: usize, prompt: &str) -> Vec<String> {
        let dir = tempdir();
        let path = dir.join("tasks.jsonl");
        let mut lines = String::new();
        for i in 0..n {
            lines.push_str(&serde_json::json!({"prompt": format!("{prompt} #{i}")}).to_string());
            lines.push('\n');
        }
        std::fs::write(&path, lines).expect("write tasks file");
        let out = self.cli_ok(&["enqueue", "--file", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_dir_all(dir);
        out.lines().map(str::to_owned).collect()
    }

    pub fn record(&self, id: &str) -> TaskRecord {
        let out = self.cli_ok(&["status", id, "--json"]);
        serde_json::from_str(&out).expect("status --json is a task record")
    }

    /// Runs `pipe` on the fleet's Redis: on a single server with the test's own client, on
    /// a cluster through agentfleet's own connection (which splits a pipeline by slot).
    pub fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> T {
        if let Some(client) = &self.client {
            let mut conn = client
                .get_connection()
                .expect("redis reachable for the tests");
            return pipe.query(&mut conn).expect("pipeline");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            let mut conn = agentfleet_queue::connect(&self.redis, &Default::default())
                .expect("connect to the cluster");
            pipe.query_async(&mut conn).await.expect("pipeline")
        })
    }

    /// Statuses of many tasks, straight from Redis.
    pub fn statuses(&self, ids: &[String]) -> Vec<Option<TaskStatus>> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.ns().task(id), "status");
        }
        let raw: Vec<Option<String>> = self.query_pipe(&pipe);
        raw.into_iter()
            .map(|s| s.and_then(|s| s.parse().ok()))
            .collect()
    }

    /// How many of the tasks have `role`'s output stored (that stage done for them).
    pub fn count_stage_done(&self, ids: &[String], role: &str) -> usize {
        let namespace = self.ns();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(namespace.task(id), format!("{role}.state"));
        }
        let states: Vec<Option<String>> = self.query_pipe(&pipe);
        states
            .iter()
            .filter(|s| s.as_deref() == Some("done"))
            .count()
    }

    pub fn count_status(&self, ids: &[String], status: TaskStatus) -> usize {
        self.statuses(ids)
            .iter()
            .filter(|s| **s == Some(status))
            .count()
    }

    /// The Redis keys of one role's queue in this fleet (named by `crates/queue` only).
    pub fn queue_keys(&self, role: &str) -> agentfleet_queue::QueueKeys {
        self.ns().queue(role).expect("a valid role name")
    }

    /// This fleet's namespace, as `crates/queue` names its keys.
    pub fn ns(&self) -> agentfleet_queue::Namespace {
        agentfleet_queue::Namespace::new(&self.namespace).expect("a valid namespace")
    }

    pub fn queue_counts(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["queues", "--json"])).expect("queues --json")
    }

    /// The counts once every role's queue is idle (nothing pending, in flight or
    /// scheduled). A task's record says `done` a moment before its entry is acknowledged
    /// (acks are batched), so counters read right after the records may lag.
    pub fn settled_counts(&self) -> serde_json::Value {
        let idle = |counts: &serde_json::Value| {
            counts.as_array().is_some_and(|roles| {
                roles
                    .iter()
                    .all(|r| r["pending"] == 0 && r["in_flight"] == 0 && r["scheduled"] == 0)
            })
        };
        let mut counts = self.queue_counts();
        let start = Instant::now();
        while !idle(&counts) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
            counts = self.queue_counts();
        }
        counts
    }

    /// Every key under the namespace.
    pub fn keys(&self) -> Vec<String> {
        self.try_keys().expect("scan the namespace")
    }

    fn try_keys(&self) -> Result<Vec<String>, agentfleet_testkit::TestkitError> {
        all_namespace_keys(&self.redis, &self.ns())
    }

    pub fn worker(&self, role: &str) -> WorkerBuilder<'_> {
        WorkerBuilder {
            fleet: self,
            role: role.to_owned(),
            binary: format!("{role}-worker"),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// A worker of `role` run by the generic `agent-worker --role ROLE`.
    pub fn agent(&self, role: &str) -> WorkerBuilder<'_> {
        WorkerBuilder {
            binary: "agent-worker".to_owned(),
            ..self.worker(role)
        }
        .arg("--role", role)
    }
}

/// Options for one worker process.
pub struct WorkerBuilder<'a> {
    fleet: &'a Fleet,
    role: String,
    binary: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl WorkerBuilder<'_> {
    /// Runs the worker with its clock shifted (`"+60s"`, `"-60s"`) by libfaketime, preloaded
    /// into the worker itself: the `faketime` command would fork it as a child that a kill of
    /// the wrapper leaves running.
    pub fn clock_offset(self, offset: &str) -> Self {
        let lib = [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib",
        ]
        .iter()
        .map(|dir| std::path::Path::new(dir).join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is installed (.ci/install-deploy-tools.sh installs faketime)");
        self.env("LD_PRELOAD", lib.display())
            .env("FAKETIME", offset)
    }

    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.envs.push((key.to_owned(), value.to_string()));
        self
    }

    /// Starts the worker and waits for its /healthz.
    pub fn spawn(self) -> Worker {
        let worker = self.start();
        assert!(
            wait_until(Duration::from_secs(10), || worker.http_status("/healthz")
                == Some(200)),
            "{} worker did not come up:\n{}",
            worker.role,
            worker.log()
        );
        worker
    }

    /// Starts the worker without waiting for anything (for workers expected to stop).
    pub fn start(self) -> Worker {
        let port = free_port();
        let binary = bin(&self.binary);
        let mut cmd = Command::new(&binary);
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(&self.args)
            .envs(self.fleet.redis.to_env())
            .env("AGENTFLEET_NAMESPACE", &self.fleet.namespace)
            .envs(self.fleet.pipeline_env())
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn worker");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        Worker {
            child,
            port,
            log,
            role: self.role,
        }
    }
}

/// A running worker process; killed (SIGKILL) on drop if still running.
pub struct Worker {
    child: Child,
    pub port: u16,
    pub role: String,
    log: Arc<Mutex<String>>,
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the worker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal
    /// or still running after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// HTTP status of a GET on the worker's metrics port (None when nothing answers).
    pub fn http_status(&self, path: &str) -> Option<u16> {
        http_get(self.port, path).map(|(status, _)| status)
    }

    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET against 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A fresh temporary directory (panics if it cannot be made).
pub fn tempdir() -> PathBuf {
    agentfleet_testkit::tempdir("test").unwrap_or_else(|e| panic!("{e}"))
}

/// Test certificates made with `openssl` in a temporary directory: a CA, a server
/// certificate for 127.0.0.1 and localhost signed by it, a client certificate signed by it,
/// and a second CA that signed nothing of this server's ("the wrong CA").
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn generate() -> Self {
        let dir = tempdir();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "wrong-ca"] {
            let key = format!("{ca}.key");
            let crt = format!("{ca}.crt");
            let subj = format!("/CN=agentfleet test {ca}");
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            run(&args);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
            .expect("write client.ext");
        for (name, subj) in [
            ("server", "/CN=127.0.0.1"),
            ("client", "/CN=agentfleet-worker"),
        ] {
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let crt = format!("{name}.crt");
            let ext = format!("{name}.ext");
            let mut args = vec!["req", "-new", "-subj", subj];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr]);
            run(&args);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ]);
        }
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private redis-server that speaks only TLS (`--port 0 --tls-port P`), with the
/// certificates of `certs`; with `mutual`, it requires a client certificate signed by the
/// CA. Killed on drop.
pub struct TlsRedis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    pub fn start(certs: &Certs, mutual: bool) -> Self {
        let port = free_port();
        let dir = tempdir();
        let child = Command::new(redis_server_path())
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(certs.path("server.crt"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.crt"))
            .args(["--tls-auth-clients", if mutual { "yes" } else { "no" }])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server with TLS");
        let redis = Self { child, port, dir };
        let mut admin = redis.args(certs);
        if mutual {
            admin = redis.mutual_args(certs);
        }
        assert!(
            wait_until(Duration::from_secs(10), || {
                admin
                    .client()
                    .and_then(|c| Ok(c.get_connection()?))
                    .and_then(|mut c| Ok(redis::cmd("PING").query::<String>(&mut c)?))
                    .is_ok()
            }),
            "redis-server with TLS did not start (is it built with TLS?)"
        );
        redis
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Server-only TLS: trust the test CA.
    pub fn args(&self, certs: &Certs) -> RedisArgs {
        let mut args = RedisArgs::plain(self.url());
        args.ca_file = Some(certs.path("ca.crt"));
        args
    }

    /// Mutual TLS: trust the test CA and present the client certificate.
    pub fn mutual_args(&self, certs: &Certs) -> RedisArgs {
        let mut args = self.args(certs);
        args.client_cert = Some(certs.path("client.crt"));
        args.client_key = Some(certs.path("client.key"));
        args
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fake OpenAI-compatible provider on loopback that answers every Chat Completions call
/// and records it. Serves until the test process ends.
pub struct FakeProvider {
    pub port: u16,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// How a [`FakeProvider`] answers: the reply's text for a request body (parsed JSON). It may
/// sleep to play a slow model; each request runs on its own thread.
pub type Reply = dyn Fn(&serde_json::Value) -> String + Send + Sync;

impl FakeProvider {
    /// Answers every call with `answer`.
    pub fn start(answer: String) -> Self {
        Self::scripted(move |_| answer.clone())
    }

    /// Answers each call with what `reply` makes of its request body.
    pub fn scripted(reply: impl Fn(&serde_json::Value) -> String + Send + Sync + 'static) -> Self {
        use std::io::{Read, Write};
        let reply: Arc<Reply> = Arc::new(reply);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake provider");
        let port = listener.local_addr().expect("local addr").port();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let counter = calls.clone();
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply = reply.clone();
                let recorded = recorded.clone();
                std::thread::spawn(move || {
                    // Read the head, then as many body bytes as it announces.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let Ok(n) = stream.read(&mut chunk) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let raw = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                    let request: serde_json::Value =
                        serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null);
                    if let Ok(mut r) = recorded.lock() {
                        r.push(raw);
                    }
                    let body = serde_json::json!({
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 1741569952,
                        "model": request["model"].as_str().unwrap_or("gpt-4o-mini"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply(&request)},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
                    })
                    .to_string();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Self {
            port,
            calls,
            requests,
        }
    }

    /// Every request body received so far, exactly as sent.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The user message of a Chat Completions request body (its last message).
    pub fn user_message(request: &serde_json::Value) -> &str {
        request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
    }

    /// Connections made to it: each is one provider call (it closes every connection).
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
