//! Connections to Redis in its three deployment modes.
//!
//! - Standalone: one `ConnectionManager`, which reconnects by itself after a dropped
//!   connection (such as a server's idle `timeout` closing it).
//! - Cluster: one cluster connection, which follows `MOVED`/`ASK` redirections and
//!   reconnects to nodes by itself. It is created on first use, so start-up never waits
//!   for the cluster.
//! - Sentinel: the master's address is asked from the sentinels, then used like a
//!   standalone server; after a failed command the address is asked again, so a
//!   failover moves the store to the new master.
//!
//! Nothing here connects eagerly: `Backend::new` only parses and validates URLs.

use std::sync::Mutex;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, TlsCertificates, TlsMode, Value,
};

use super::RedisSettings;

/// Redis deployment mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (or a proxy in front of several) at the URL.
    Standalone,
    /// Redis Cluster; the URL and `nodes` are seed nodes.
    Cluster { nodes: Vec<String> },
    /// Redis Sentinel; the URL and `nodes` are sentinels. The URL's username, password,
    /// database and TLS setting also apply to the master.
    Sentinel {
        master_name: String,
        nodes: Vec<String>,
    },
}

/// Reconnection attempts per command before it fails. The store's outage buffer and
/// replay take over from there, so a command does not wait through a long backoff.
const RECONNECT_RETRIES: usize = 1;

pub(super) enum Backend {
    Standalone(ConnectionManager),
    Cluster {
        client: ClusterClient,
        connection: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master: Mutex<Option<ConnectionManager>>,
        config: ConnectionManagerConfig,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry passwords, so only the mode is shown.
        f.write_str(match self {
            Backend::Standalone(_) => "Backend::Standalone",
            Backend::Cluster { .. } => "Backend::Cluster",
            Backend::Sentinel { .. } => "Backend::Sentinel",
        })
    }
}

/// A connection handle for one command; cheap to clone.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Backend {
    /// Validates the URLs and prepares connections without opening any.
    pub(super) fn new(settings: &RedisSettings) -> RedisResult<Backend> {
        let url = settings.url.as_str();
        let connect_timeout = settings.connect_timeout;
        let command_timeout = settings.command_timeout;
        let certificates = settings
            .ca_certificates_pem
            .as_ref()
            .map(|pem| TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout));
        match &settings.mode {
            RedisMode::Standalone => {
                let client = match certificates {
                    Some(certificates) => Client::build_with_tls(url, certificates)?,
                    None => Client::open(url)?,
                };
                Ok(Backend::Standalone(
                    ConnectionManager::new_lazy_with_config(client, config)?,
                ))
            }
            RedisMode::Cluster { nodes } => {
                let mut seeds = vec![url.to_owned()];
                seeds.extend(nodes.iter().cloned());
                let mut builder = ClusterClient::builder(seeds)
                    .retries(RECONNECT_RETRIES as u32)
                    .connection_timeout(connect_timeout)
                    .response_timeout(command_timeout);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                let client = builder.build()?;
                Ok(Backend::Cluster {
                    client,
                    connection: tokio::sync::Mutex::new(None),
                })
            }
            RedisMode::Sentinel { master_name, nodes } => {
                let info = url.into_connection_info()?;
                let mut node_info = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info.redis_settings().clone());
                if let ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
                    node_info = node_info.set_tls_mode(if *insecure {
                        TlsMode::Insecure
                    } else {
                        TlsMode::Secure
                    });
                }
                let mut sentinels = vec![url.to_owned()];
                sentinels.extend(nodes.iter().cloned());
                let client = SentinelClient::build(
                    sentinels,
                    master_name.as_str(),
                    Some(node_info),
                    SentinelServerType::Master,
                )?;
                Ok(Backend::Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    master: Mutex::new(None),
                    config,
                })
            }
        }
    }

    pub(super) fn mode_name(&self) -> &'static str {
        match self {
            Backend::Standalone(_) => "standalone",
            Backend::Cluster { .. } => "cluster",
            Backend::Sentinel { .. } => "sentinel",
        }
    }

    /// Returns a connection, opening one first where the mode needs it.
    pub(super) async fn connection(&self) -> RedisResult<Connection> {
        match self {
            Backend::Standalone(manager) => Ok(Connection::Single(manager.clone())),
            Backend::Cluster { client, connection } => {
                let mut slot = connection.lock().await;
                if let Some(existing) = slot.as_ref() {
                    return Ok(Connection::Cluster(existing.clone()));
                }
                let fresh = client.get_async_connection().await?;
                *slot = Some(fresh.clone());
                Ok(Connection::Cluster(fresh))
            }
            Backend::Sentinel {
                client,
                master,
                config,
            } => {
                if let Some(existing) = lock(master).clone() {
                    return Ok(Connection::Single(existing));
                }
                let master_client = client.lock().await.async_get_client().await?;
                let manager =
                    ConnectionManager::new_lazy_with_config(master_client, config.clone())?;
                *lock(master) = Some(manager.clone());
                Ok(Connection::Single(manager))
            }
        }
    }

    /// Drops, after a failed command, the connections that cannot recover by themselves,
    /// so the next command requests the master's address from the sentinels again.
    pub(super) fn on_error(&self, error: &RedisError) {
        if let Backend::Sentinel { master, .. } = self {
            tracing::debug!(error.kind = ?error.kind(), "forgetting the Redis master address");
            *lock(master) = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is replaced whole, so a poisoned lock still holds a valid one.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
