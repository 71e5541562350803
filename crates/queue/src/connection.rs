use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{
    Arg, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};

use crate::QueueError;
use crate::cluster_link::ClusterLink;

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

/// A Redis URL whose password is never shown: `Display` and `Debug` print it with the
/// password replaced by `***`. Parsing never fails (so that clap, which echoes values it
/// rejects, never prints one); [`connect`] checks it and says what is wrong without it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for handing to a child process or a Redis client only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The URL as it may be shown: password replaced by `***`, or a placeholder when it does
    /// not parse (its text could hold a password anywhere). A cluster's comma-separated seed
    /// list is shown seed by seed.
    pub fn redacted(&self) -> String {
        self.seeds()
            .map(|seed| match url::Url::parse(seed) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        // Cannot fail for a URL that has a password (it has a host).
                        let _ = u.set_password(Some("***"));
                    }
                    u.to_string()
                }
                Err(_) => "<unparseable URL, not shown>".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The comma-separated URLs of this text: one for a single Redis, the seed nodes of a
    /// cluster.
    fn seeds(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').map(str::trim).filter(|s| !s.is_empty())
    }

    pub fn is_tls(&self) -> bool {
        self.seeds().next().is_some_and(is_tls_url)
    }
}

impl FromStr for RedisUrl {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

/// Where Redis is and how to talk to it: the flags every binary (workers, CLI, bench) takes,
/// each also an environment variable.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Redis connection")]
pub struct RedisArgs {
    /// Redis to use: redis://[USER:PASSWORD@]HOST[:PORT][/DB], or rediss://... for TLS;
    /// with --redis-cluster, a comma-separated list of some of the cluster's nodes. The
    /// password is never printed.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub url: RedisUrl,

    /// PEM file of the CA(s) that signed Redis's certificate (rediss:// only); default: the
    /// system's trust store.
    #[arg(
        long = "redis-ca-file",
        env = "AGENTFLEET_REDIS_CA_FILE",
        global = true,
        value_name = "PEM"
    )]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) for mutual TLS; needs --redis-client-key.
    #[arg(
        long = "redis-client-cert",
        env = "AGENTFLEET_REDIS_CLIENT_CERT",
        global = true,
        value_name = "PEM"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(
        long = "redis-client-key",
        env = "AGENTFLEET_REDIS_CLIENT_KEY",
        global = true,
        value_name = "PEM"
    )]
    pub client_key: Option<PathBuf>,

    /// DEVELOPMENT ONLY: accept any server certificate (no CA or host name check). Logged
    /// as a warning at every start.
    #[arg(
        long = "redis-tls-insecure",
        env = "AGENTFLEET_REDIS_TLS_INSECURE",
        global = true
    )]
    pub tls_insecure: bool,

    /// Redis is a Redis Cluster (or a managed one: ElastiCache cluster mode, Memorystore
    /// Cluster...): --redis-url lists seed nodes, e.g.
    /// redis://127.0.0.1:7000,redis://127.0.0.1:7001. Redirections, failovers and topology
    /// changes are followed.
    #[arg(
        long = "redis-cluster",
        env = "AGENTFLEET_REDIS_CLUSTER",
        global = true
    )]
    pub cluster: bool,
}

impl RedisArgs {
    /// Plain TCP to `url`, no TLS options.
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: RedisUrl::new(url),
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls_insecure: false,
            cluster: false,
        }
    }

    /// A cluster reached through the comma-separated seed nodes `urls`.
    pub fn cluster(urls: impl Into<String>) -> Self {
        Self {
            cluster: true,
            ..Self::plain(urls)
        }
    }

    /// The same options for another URL (e.g. the bench's private Redis).
    pub fn with_url(&self, url: impl Into<String>) -> Self {
        Self {
            url: RedisUrl::new(url),
            ..self.clone()
        }
    }

    /// These flags as the environment variables a child process (a worker) reads.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("REDIS_URL", self.url.expose_secret().to_owned())];
        let path = |p: &Path| p.to_string_lossy().into_owned();
        if let Some(p) = &self.ca_file {
            env.push(("AGENTFLEET_REDIS_CA_FILE", path(p)));
        }
        if let Some(p) = &self.client_cert {
            env.push(("AGENTFLEET_REDIS_CLIENT_CERT", path(p)));
        }
        if let Some(p) = &self.client_key {
            env.push(("AGENTFLEET_REDIS_CLIENT_KEY", path(p)));
        }
        if self.tls_insecure {
            env.push(("AGENTFLEET_REDIS_TLS_INSECURE", "true".to_owned()));
        }
        if self.cluster {
            env.push(("AGENTFLEET_REDIS_CLUSTER", "true".to_owned()));
        }
        env
    }

    /// A client for these options: the URL is checked, certificate files are read and
    /// parsed now, so that a bad one stops a process at start-up with the flag's name.
    pub fn client(&self) -> Result<redis::Client, QueueError> {
        if self.cluster {
            return Err(QueueError::Config(
                "a single-server client was asked for with --redis-cluster set".to_owned(),
            ));
        }
        let info = self.connection_info(self.url.expose_secret())?;
        match self.tls_certificates()? {
            None => Ok(redis::Client::open(info)?),
            Some(certificates) => redis::Client::build_with_tls(info, certificates).map_err(|e| {
                QueueError::Config(format!(
                    "--redis-ca-file / --redis-client-cert / --redis-client-key: {e}"
                ))
            }),
        }
    }

    /// A cluster client for the seed nodes of --redis-url: same checks as [`Self::client`].
    /// Every seed must use the same scheme and credentials (the cluster's nodes share them).
    pub fn cluster_client(&self) -> Result<ClusterClient, QueueError> {
        let mut seeds = Vec::new();
        for seed in self.url.seeds() {
            let info = self.connection_info(seed)?;
            if info.redis_settings().db() != 0 {
                return Err(QueueError::Config(
                    "--redis-url: a Redis Cluster has only database 0; drop the /DB of the seed URLs".to_owned(),
                ));
            }
            seeds.push(info);
        }
        if seeds.is_empty() {
            return Err(QueueError::Config(
                "--redis-url: --redis-cluster needs at least one seed node URL".to_owned(),
            ));
        }
        if self.url.seeds().any(|s| is_tls_url(s) != self.url.is_tls()) {
            return Err(QueueError::Config(
                "--redis-url: every seed node must use the same scheme (all redis:// or all rediss://)".to_owned(),
            ));
        }
        // redis-rs retries a request through redirections, reconnects and `CLUSTERDOWN`
        // with a backoff; its defaults (16 retries, waits of up to 11 minutes) would hold a
        // settlement for many minutes. These cover a failover (a node timeout plus an
        // election: seconds) in under ten seconds; past that the caller's own backoff and
        // health reporting take over.
        //
        // The overall bound must be set here: redis-rs derives it from the builder's response
        // timeout, and a response timeout given per connection (`ClusterConfig`, see
        // [`connect`]) leaves it unset, so a request caught in a topology change could wait
        // forever (seen: a test hung for minutes after a master was killed).
        let mut builder = ClusterClientBuilder::new(seeds)
            .retries(6)
            .min_retry_wait(100)
            .max_retry_wait(1_500)
            .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT));
        if self.url.is_tls() {
            builder = builder.tls(if self.tls_insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
            if let Some(certificates) = self.tls_certificates()? {
                builder = builder.certs(certificates);
            }
        }
        builder
            .build()
            .map_err(|e| QueueError::Config(format!("--redis-url / --redis-cluster: {e}")))
    }

    /// A client per master: the single Redis, or every master of the cluster (read from
    /// the first seed that answers `CLUSTER NODES`), for what must run on each node (`INFO`,
    /// `SCAN`) from synchronous code such as a test's clean-up. Keys of several slots must
    /// not be combined in one command on such a client (Redis Cluster refuses it).
    pub fn master_clients(&self) -> Result<Vec<redis::Client>, QueueError> {
        if !self.cluster {
            return Ok(vec![self.client()?]);
        }
        let mut last_error = None;
        for seed in self.url.seeds() {
            let info = self.connection_info(seed)?;
            let nodes = self
                .node_client(info.clone())?
                .get_connection_with_timeout(Duration::from_secs(2))
                .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c));
            match nodes {
                Ok(nodes) => {
                    return parse_cluster_masters(&nodes)
                        .into_iter()
                        .map(|(host, port)| {
                            let addr = match info.addr() {
                                ConnectionAddr::TcpTls {
                                    insecure,
                                    tls_params,
                                    ..
                                } => ConnectionAddr::TcpTls {
                                    host,
                                    port,
                                    insecure: *insecure,
                                    tls_params: tls_params.clone(),
                                },
                                _ => ConnectionAddr::Tcp(host, port),
                            };
                            self.node_client(info.clone().set_addr(addr))
                        })
                        .collect();
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .map(QueueError::from)
            .unwrap_or_else(|| QueueError::Config("--redis-url: no seed node".to_owned())))
    }

    /// A client for one node (a seed or a master) with this configuration's certificates.
    fn node_client(&self, info: ConnectionInfo) -> Result<redis::Client, QueueError> {
        Ok(match self.tls_certificates()? {
            None => redis::Client::open(info)?,
            Some(c) => redis::Client::build_with_tls(info, c)?,
        })
    }

    /// Why the cluster's seeds refuse us, if they do. redis-rs reports a cluster it could
    /// not reach at all as "no connections found", whatever the reason; one plain PING per
    /// seed, with the same TLS files and credentials, tells a refused certificate or
    /// password (which waiting will not fix: the error says which flag to check) from nodes
    /// that are away (None: wait for them).
    pub async fn cluster_refusal(&self) -> Option<QueueError> {
        if !self.cluster {
            return None;
        }
        for seed in self.url.seeds() {
            let Ok(client) = self.connection_info(seed).and_then(|i| self.node_client(i)) else {
                continue;
            };
            let ping = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), ping).await {
                let e = QueueError::from(e);
                if e.is_refusal() {
                    return Some(e);
                }
            }
        }
        None
    }

    /// One URL of --redis-url parsed, refusing TLS flags on a plain URL and applying
    /// --redis-tls-insecure to a TLS one. Never echoes the URL's text (it may hold a password).
    fn connection_info(&self, url: &str) -> Result<ConnectionInfo, QueueError> {
        let config = |msg: String| QueueError::Config(msg);
        let info = url.into_connection_info().map_err(|e| {
            config(format!(
                "--redis-url is not a usable Redis URL ({e}); want redis://[USER:PASSWORD@]HOST[:PORT][/DB] or rediss://..."
            ))
        })?;
        let tls_flags = self.ca_file.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.tls_insecure;
        if !is_tls_url(url) {
            if tls_flags {
                return Err(config(format!(
                    "--redis-ca-file, --redis-client-cert, --redis-client-key and --redis-tls-insecure need a rediss:// URL; --redis-url is {}",
                    self.url
                )));
            }
            return Ok(info);
        }
        Ok(match (info.addr().clone(), self.tls_insecure) {
            (
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    tls_params,
                    ..
                },
                true,
            ) => info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: true,
                tls_params,
            }),
            _ => info,
        })
    }

    /// The CA and client certificate files, read and checked; None when neither is given
    /// (the system's trust store, no client certificate).
    fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, QueueError> {
        let config = |msg: &str| QueueError::Config(msg.to_owned());
        let client_tls = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem("--redis-client-cert", cert, "CERTIFICATE")?,
                client_key: read_pem("--redis-client-key", key, "PRIVATE KEY")?,
            }),
            (Some(_), None) => return Err(config("--redis-client-cert needs --redis-client-key")),
            (None, Some(_)) => return Err(config("--redis-client-key needs --redis-client-cert")),
        };
        let root_cert = match &self.ca_file {
            Some(path) => Some(read_pem("--redis-ca-file", path, "CERTIFICATE")?),
            None => None,
        };
        if self.url.is_tls() {
            install_crypto_provider();
        }
        if client_tls.is_none() && root_cert.is_none() {
            return Ok(None);
        }
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Longest a cluster request may take, retries and redirections included: above the longest
/// blocking wait (the fetcher's, 1 s) and a failover's usual few seconds.
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("valkeys://")
}

/// rustls needs one process-wide crypto provider: ring, the one reqwest uses too.
fn install_crypto_provider() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM file for `flag`, checking that it holds a `kind` block, so that a wrong or
/// empty file is reported with the flag's name before any connection is tried.
fn read_pem(flag: &str, path: &Path, kind: &str) -> Result<Vec<u8>, QueueError> {
    let bytes = std::fs::read(path)
        .map_err(|e| QueueError::Config(format!("{flag} {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(kind));
    if !found {
        return Err(QueueError::Config(format!(
            "{flag} {}: no PEM {kind} in the file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A connection to Redis, cheap to clone (clones share it): one server, or a Redis Cluster
/// with `--redis-cluster`. Every part of agentfleet talks to Redis through this type, so the
/// cluster case is handled here once: commands go to the node owning their key's slot
/// (following `MOVED`/`ASK` and failovers), and a pipeline whose commands live in several
/// slots is sent as one sub-pipeline per slot, concurrently, its replies put back in order.
/// A cluster pipeline is therefore neither one round trip nor ordered across slots: a caller
/// that needs one slot's writes to land before another's sends two pipelines (see
/// `Queue::enqueue_tasks`: records, then the jobs that point at them).
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterLink),
}

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Every key matching `pattern` (`SCAN ... MATCH`): on a cluster, scanned on every
    /// master. A key may be seen twice (SCAN's own guarantee); callers tolerate that.
    pub async fn scan_match(&self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let scan = |cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1_000);
            cmd
        };
        let mut keys = Vec::new();
        match self {
            Self::Single(conn) => {
                let mut conn = conn.clone();
                let mut cursor = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) =
                        scan(cursor).query_async(&mut conn).await?;
                    keys.extend(batch);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Self::Cluster(link) => {
                let mut conn = link.conn();
                for (host, port) in self.masters().await? {
                    let mut cursor = 0;
                    loop {
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let reply = conn.route_command(scan(cursor), route).await?;
                        let (next, batch): (u64, Vec<String>) =
                            redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
                        keys.extend(batch);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
        }
        Ok(keys)
    }

    /// The cluster's masters (host, port), from `CLUSTER NODES`; empty for a single Redis.
    pub async fn masters(&self) -> redis::RedisResult<Vec<(String, u16)>> {
        let Self::Cluster(link) = self else {
            return Ok(Vec::new());
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut link.conn())
            .await?;
        Ok(parse_cluster_masters(&nodes))
    }
}

/// (host, port) of every master line of a `CLUSTER NODES` reply that is not failed.
pub(crate) fn parse_cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _id = fields.next()?;
            let addr = fields.next()?;
            let flags = fields.next()?;
            let is_master = flags.split(',').any(|f| f == "master");
            let failed = flags
                .split(',')
                .any(|f| matches!(f, "fail" | "noaddr" | "handshake"));
            if !is_master || failed {
                return None;
            }
            // ip:port@cport[,hostname]
            let host_port = addr.split('@').next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(link) => {
                let mut conn = link.conn();
                Box::pin(async move { conn.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(link) => {
                let mut conn = link.conn();
                Box::pin(async move { cluster_pipeline(&mut conn, pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(link) => link.conn().get_db(),
        }
    }
}

/// The slot a command's key hashes to, for the commands agentfleet pipelines: the first
/// argument after the name, or for `EVAL`/`EVALSHA` the first declared key. None for a
/// command without a key.
fn command_route(cmd: &Cmd) -> Option<Route> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            args.get(3)?
        }
        _ => args.get(1)?,
    };
    Some(Route::with_slot(Slot::for_key(key), SlotAddr::Master))
}

/// A pipeline on a cluster: as is when its commands share a slot (or it is a transaction,
/// which must), else one sub-pipeline per slot, sent concurrently, replies re-ordered.
async fn cluster_pipeline(
    conn: &mut redis::cluster_async::ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<Value>> {
    let routes: Vec<Option<Route>> = pipeline.cmd_iter().map(command_route).collect();
    let mut groups: Vec<(Option<Route>, Vec<usize>)> = Vec::new();
    let first = routes.iter().flatten().next().copied();
    for (i, route) in routes.iter().enumerate() {
        // A keyless command rides with the first slot's group.
        let route = route.or(first);
        match groups.iter_mut().find(|(r, _)| *r == route) {
            Some((_, members)) => members.push(i),
            None => groups.push((route, vec![i])),
        }
    }
    let whole = offset == 0 && count == routes.len();
    if groups.len() <= 1 || !whole {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let sends = groups.iter().map(|(_, members)| {
        let mut sub = redis::pipe();
        for &i in members {
            sub.add_command(commands[i].clone());
        }
        let mut conn = conn.clone();
        async move {
            let n = sub.len();
            conn.req_packed_commands(&sub, 0, n).await
        }
    });
    let replies = futures::future::join_all(sends).await;
    let mut out = vec![Value::Nil; routes.len()];
    for ((_, members), reply) in groups.iter().zip(replies) {
        for (&i, value) in members.iter().zip(reply?) {
            out[i] = value;
        }
    }
    Ok(out)
}

/// A self-reconnecting connection. It connects lazily: a worker started while Redis is down
/// comes up, reports not ready, and connects when Redis answers. With `--redis-cluster` it is
/// a cluster connection (lazy too) that follows the cluster's topology.
pub fn connect(redis: &RedisArgs, options: &ConnectOptions) -> Result<RedisConnection, QueueError> {
    if redis.tls_insecure {
        tracing::warn!(
            redis_url = %redis.url,
            "--redis-tls-insecure: Redis's certificate is NOT verified; anyone on the path can read and change queue traffic. Development only."
        );
    }
    if redis.cluster {
        let client = redis.cluster_client()?;
        let config = ClusterConfig::new()
            .set_connection_timeout(options.connect_timeout)
            .set_response_timeout(options.response_timeout);
        // Probe timeout: a healthy slot refresh connects to every node (each within the
        // connect timeout) and asks one of them (within the response timeout).
        let probe_timeout = options.connect_timeout + options.response_timeout;
        return Ok(RedisConnection::Cluster(ClusterLink::new(
            client,
            config,
            probe_timeout,
        )));
    }
    let client = redis.client()?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(options.response_timeout))
        .set_connection_timeout(Some(options.connect_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    Ok(RedisConnection::Single(
        client.get_connection_manager_lazy(config)?,
    ))
}

/// One PING. Ok when Redis answered; Err when it refused us for a reason that waiting will
/// not fix (TLS certificate, password, ACL), so that a process stops at start-up with the
/// reason. Redis being unreachable is Ok here: workers wait for it (see [`connect`]).
pub async fn check_access(conn: &RedisConnection) -> Result<(), QueueError> {
    match redis::cmd("PING")
        .query_async::<String>(&mut conn.clone())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = QueueError::from(e);
            if e.is_refusal() { Err(e) } else { Ok(()) }
        }
    }
}

/// The connections a worker process needs: one multiplexed connection for everything,
/// checked with [`check_access`], and one of its own per shard of its queue for that shard's
/// blocking wait (a blocking command stalls the connection it runs on).
pub async fn connect_worker(
    redis: &RedisArgs,
    shards: usize,
) -> Result<(RedisConnection, Vec<RedisConnection>), QueueError> {
    let options = ConnectOptions::default();
    let conn = connect(redis, &options)?;
    check_access(&conn).await?;
    if let Some(refused) = redis.cluster_refusal().await {
        return Err(refused);
    }
    let blocking = (0..shards.max(1))
        .map(|_| connect(redis, &options))
        .collect::<Result<_, _>>()?;
    Ok((conn, blocking))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_displayed() {
        let url = RedisUrl::new("redis://agent:canary-s3cret@redis.example:6380/2");
        assert_eq!(url.to_string(), "redis://agent:***@redis.example:6380/2");
        assert!(!format!("{url:?}").contains("canary"));
        let args = RedisArgs::plain("rediss://:canary-s3cret@h");
        assert!(!format!("{args:?}").contains("canary"));
        assert!(
            !RedisUrl::new("redis://:canary@[bad")
                .to_string()
                .contains("canary")
        );
        assert_eq!(
            RedisUrl::new("redis://127.0.0.1:6379").to_string(),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn tls_flags_need_a_tls_url_and_name_the_flag() {
        let mut args = RedisArgs::plain("redis://127.0.0.1:6379");
        args.ca_file = Some("/nonexistent".into());
        let e = args.client().unwrap_err().to_string();
        assert!(e.contains("rediss://"), "{e}");
        let args = args.with_url("rediss://127.0.0.1:6379");
        let e = args.client().unwrap_err().to_string();
        assert!(e.contains("--redis-ca-file /nonexistent"), "{e}");
    }

    #[test]
    fn cluster_seeds_are_redacted_one_by_one() {
        let url = RedisUrl::new("redis://:canary@h1:7000,redis://:canary@h2:7001");
        assert_eq!(url.to_string(), "redis://:***@h1:7000,redis://:***@h2:7001");
        let e = RedisArgs::cluster("redis://h1:7000,rediss://h2:7001")
            .cluster_client()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("same scheme"), "{e}");
    }

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7003@17003 slave a1 0 0 1 connected\n\
                     c3 127.0.0.1:7001@17001,node-b master,fail - 0 0 2 connected\n\
                     d4 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383\n";
        assert_eq!(
            parse_cluster_masters(nodes),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7002)
            ]
        );
    }

    #[test]
    fn pipeline_commands_are_routed_by_their_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc")
            .arg(2)
            .arg("{ns:a}:pending")
            .arg("{ns:a}:wake");
        let mut hset = redis::cmd("HSET");
        hset.arg("{ns:a}:stats").arg("f").arg(1);
        assert_eq!(command_route(&eval), command_route(&hset));
        let mut other = redis::cmd("HSET");
        other.arg("ns:task:1").arg("f").arg(1);
        assert_ne!(command_route(&eval), command_route(&other));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0);
        assert_eq!(command_route(&keyless), None);
    }

    #[test]
    fn a_bad_url_is_refused_without_being_echoed() {
        let e = RedisArgs::plain("http://user:canary@host")
            .client()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--redis-url"), "{e}");
        assert!(!e.contains("canary"), "{e}");
    }
}
