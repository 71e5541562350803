use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo};

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
    /// not parse (its text could hold a password anywhere).
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    // Cannot fail for a URL that has a password (it has a host).
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "<unparseable URL, not shown>".to_owned(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://") || self.0.starts_with("valkeys://")
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
    /// Redis to use: redis://[USER:PASSWORD@]HOST[:PORT][/DB], or rediss://... for TLS.
    /// The password is never printed.
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
        env
    }

    /// A client for these options: the URL is checked, certificate files are read and
    /// parsed now, so that a bad one stops a process at start-up with the flag's name.
    pub fn client(&self) -> Result<redis::Client, QueueError> {
        let config = |msg: String| QueueError::Config(msg);
        let info = self.url.expose_secret().into_connection_info().map_err(|e| {
            config(format!(
                "--redis-url is not a usable Redis URL ({e}); want redis://[USER:PASSWORD@]HOST[:PORT][/DB] or rediss://..."
            ))
        })?;
        let tls_flags = self.ca_file.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.tls_insecure;
        if !self.url.is_tls() {
            if tls_flags {
                return Err(config(format!(
                    "--redis-ca-file, --redis-client-cert, --redis-client-key and --redis-tls-insecure need a rediss:// URL; --redis-url is {}",
                    self.url
                )));
            }
            return Ok(redis::Client::open(info)?);
        }
        let info = match (info.addr().clone(), self.tls_insecure) {
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
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem("--redis-client-cert", cert, "CERTIFICATE")?,
                client_key: read_pem("--redis-client-key", key, "PRIVATE KEY")?,
            }),
            (Some(_), None) => {
                return Err(config(
                    "--redis-client-cert needs --redis-client-key".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(config(
                    "--redis-client-key needs --redis-client-cert".to_owned(),
                ));
            }
        };
        let root_cert = match &self.ca_file {
            Some(path) => Some(read_pem("--redis-ca-file", path, "CERTIFICATE")?),
            None => None,
        };
        install_crypto_provider();
        if client_tls.is_none() && root_cert.is_none() {
            return Ok(redis::Client::open(info)?);
        }
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| {
            config(format!(
                "--redis-ca-file / --redis-client-cert / --redis-client-key: {e}"
            ))
        })
    }
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

/// A multiplexed, self-reconnecting connection. It connects lazily: a worker started while
/// Redis is down comes up, reports not ready, and connects when Redis answers.
pub fn connect(
    redis: &RedisArgs,
    options: &ConnectOptions,
) -> Result<ConnectionManager, QueueError> {
    let client = redis.client()?;
    if redis.tls_insecure {
        tracing::warn!(
            redis_url = %redis.url,
            "--redis-tls-insecure: Redis's certificate is NOT verified; anyone on the path can read and change queue traffic. Development only."
        );
    }
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(options.response_timeout))
        .set_connection_timeout(Some(options.connect_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    Ok(client.get_connection_manager_lazy(config)?)
}

/// One PING. Ok when Redis answered; Err when it refused us for a reason that waiting will
/// not fix (TLS certificate, password, ACL), so that a process stops at start-up with the
/// reason. Redis being unreachable is Ok here: workers wait for it (see [`connect`]).
pub async fn check_access(conn: &ConnectionManager) -> Result<(), QueueError> {
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

/// The two connections a worker process needs: one multiplexed connection for everything,
/// checked with [`check_access`], and one of its own for the fetcher's blocking `BLMOVE`
/// (a blocking command stalls the connection it runs on).
pub async fn connect_worker(
    redis: &RedisArgs,
) -> Result<(ConnectionManager, ConnectionManager), QueueError> {
    let options = ConnectOptions::default();
    let conn = connect(redis, &options)?;
    check_access(&conn).await?;
    let blocking = connect(redis, &options)?;
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
    fn a_bad_url_is_refused_without_being_echoed() {
        let e = RedisArgs::plain("http://user:canary@host")
            .client()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--redis-url"), "{e}");
        assert!(!e.contains("canary"), "{e}");
    }
}
