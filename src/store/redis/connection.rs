//! The connection to Redis in each `store.redis.mode`, behind one cheap-to-clone handle that
//! every Redis-backed store runs its commands and scripts on:
//! - `standalone`: a `ConnectionManager` to `url` (reconnects by itself).
//! - `sentinel`: the Sentinels are asked for the primary, and a `ConnectionManager` to it is
//!   kept. A failure that may mean a failover (refused, dropped or timed-out connection,
//!   `READONLY` from a demoted primary, `MASTERDOWN`) forgets it, so the next call asks the
//!   Sentinels again: the gates follow a failover without a restart.
//! - `cluster`: the `redis` crate's cluster client, which learns the slot map from the seed
//!   nodes and follows `MOVED`/`ASK`, reconnects and failovers itself. Every atomic step keeps
//!   its keys in one slot (see the key layout in `store::redis`).
//!
//! Nothing here is kept across a failed connect: the next call tries again, so the store
//! recovers when Redis comes back.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::{
    Client, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisConnectionInfo,
    RedisError, RedisFuture, ServerErrorKind, TlsMode, Value,
};
use tokio::sync::{Mutex, OnceCell};

use crate::config::settings::{
    ClusterSettings, RedisAuth, RedisMode, RedisNode, RedisSettings, SentinelSettings,
    redact_url_password,
};

/// Reconnection attempts inside one connect; kept low because every call is bounded anyway and
/// the next call starts a fresh attempt.
const CONNECT_RETRIES: usize = 1;
/// The cluster client's own retries of a command (MOVED, TRYAGAIN, a node down); each call is
/// bounded by the store's call timeout all the same.
const CLUSTER_RETRIES: u32 = 6;

/// One connection to whichever Redis the mode names; clones share it.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_command(cmd),
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Makes (and keeps) the connection for the configured mode.
pub enum Connector {
    Standalone {
        client: Client,
        config: ConnectionManagerConfig,
        connection: OnceCell<ConnectionManager>,
    },
    Sentinel {
        sentinel: Mutex<SentinelClient>,
        config: ConnectionManagerConfig,
        /// The primary's connection, until a failure says it may not be the primary any more.
        primary: RwLock<Option<ConnectionManager>>,
    },
    Cluster {
        client: ClusterClient,
        connection: OnceCell<ClusterConnection>,
        /// Plain clients of the seed nodes, for the signal subscription (a publish reaches
        /// every node of a cluster).
        seeds: Vec<Client>,
    },
}

impl Connector {
    /// Prepares the client; connects nothing (the first call does).
    pub fn new(settings: &RedisSettings) -> Result<Self, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(match &settings.mode {
            RedisMode::Standalone => Connector::Standalone {
                client: Client::open(settings.url.as_str())?,
                config,
                connection: OnceCell::new(),
            },
            RedisMode::Sentinel(sentinel) => Connector::Sentinel {
                sentinel: Mutex::new(sentinel_client(sentinel)?),
                config,
                primary: RwLock::new(None),
            },
            RedisMode::Cluster(cluster) => Connector::Cluster {
                client: cluster_client(cluster, settings)?,
                connection: OnceCell::new(),
                seeds: cluster
                    .nodes
                    .iter()
                    .map(|node| seed_client(node, &cluster.data_auth))
                    .collect::<Result<_, _>>()?,
            },
        })
    }

    /// The connection, made on first use (and, for Sentinel, after a failover).
    pub async fn connect(&self) -> Result<RedisConnection, RedisError> {
        match self {
            Connector::Standalone {
                client,
                config,
                connection,
            } => {
                let manager = connection
                    .get_or_try_init(|| client.get_connection_manager_with_config(config.clone()))
                    .await?;
                Ok(RedisConnection::Single(manager.clone()))
            }
            Connector::Sentinel {
                sentinel,
                config,
                primary,
            } => {
                if let Some(manager) = primary
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                {
                    return Ok(RedisConnection::Single(manager));
                }
                // One caller asks the Sentinels; the others wait and take its answer.
                let mut sentinel = sentinel.lock().await;
                if let Some(manager) = primary
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                {
                    return Ok(RedisConnection::Single(manager));
                }
                let client = sentinel.async_get_client().await?;
                let manager = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                *primary.write().unwrap_or_else(PoisonError::into_inner) = Some(manager.clone());
                drop(sentinel);
                Ok(RedisConnection::Single(manager))
            }
            Connector::Cluster {
                client, connection, ..
            } => {
                let cluster = connection
                    .get_or_try_init(|| client.get_async_connection())
                    .await?;
                Ok(RedisConnection::Cluster(cluster.clone()))
            }
        }
    }

    /// A connection of its own for a subscription: the standalone server, the primary the
    /// Sentinels name now, or the first seed node of a cluster that answers.
    pub async fn pubsub(&self) -> Result<PubSub, RedisError> {
        match self {
            Connector::Standalone { client, .. } => client.get_async_pubsub().await,
            Connector::Sentinel { sentinel, .. } => {
                let client = sentinel.lock().await.async_get_client().await?;
                client.get_async_pubsub().await
            }
            Connector::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(error) => last = Some(error),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "no cluster node"))
                }))
            }
        }
    }

    /// Told of every failed call: under Sentinel, a failure that may mean the primary moved
    /// makes the next call ask the Sentinels again.
    pub fn failed(&self, error: &RedisError) {
        if may_mean_failover(error) {
            self.timed_out();
        }
    }

    /// Forgets a connection that timed out as a whole (no `RedisError` to look at): under
    /// Sentinel the next call asks the Sentinels again.
    pub fn timed_out(&self) {
        if let Connector::Sentinel { primary, .. } = self {
            primary
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }

    pub fn is_connected(&self) -> bool {
        match self {
            Connector::Standalone { connection, .. } => connection.initialized(),
            Connector::Sentinel { primary, .. } => primary
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some(),
            Connector::Cluster { connection, .. } => connection.initialized(),
        }
    }
}

/// Where the store connects, for logs: never a password.
pub fn shown(settings: &RedisSettings) -> String {
    let list = |nodes: &[RedisNode]| {
        nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    match &settings.mode {
        RedisMode::Standalone => redact_url_password(&settings.url),
        RedisMode::Sentinel(sentinel) => format!(
            "sentinel {} via {}",
            sentinel.master_name,
            list(&sentinel.sentinels)
        ),
        RedisMode::Cluster(cluster) => format!("cluster {}", list(&cluster.nodes)),
    }
}

fn may_mean_failover(error: &RedisError) -> bool {
    error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

fn address(node: &RedisNode, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(node.host.clone(), node.port)
    }
}

fn seed_client(node: &RedisNode, auth: &RedisAuth) -> Result<Client, RedisError> {
    let mut redis = RedisConnectionInfo::default();
    if let Some(username) = &auth.username {
        redis = redis.set_username(username);
    }
    if let Some(password) = &auth.password {
        redis = redis.set_password(password);
    }
    Client::open(
        address(node, auth.tls)
            .into_connection_info()?
            .set_redis_settings(redis),
    )
}

fn sentinel_client(settings: &SentinelSettings) -> Result<SentinelClient, RedisError> {
    let sentinels = settings
        .sentinels
        .iter()
        .map(|node| address(node, settings.sentinel_auth.tls));
    let mut builder =
        SentinelClientBuilder::new(sentinels, &settings.master_name, SentinelServerType::Master)?
            .set_client_to_redis_db(settings.db);
    let RedisAuth {
        username,
        password,
        tls,
    } = &settings.data_auth;
    if let Some(username) = username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = password {
        builder = builder.set_client_to_redis_password(password);
    }
    if *tls {
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
    }
    let RedisAuth {
        username,
        password,
        tls,
    } = &settings.sentinel_auth;
    if let Some(username) = username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if *tls {
        builder = builder.set_client_to_sentinel_tls_mode(TlsMode::Secure);
    }
    builder.build()
}

fn cluster_client(
    cluster: &ClusterSettings,
    settings: &RedisSettings,
) -> Result<ClusterClient, RedisError> {
    let auth = &cluster.data_auth;
    let nodes = cluster.nodes.iter().map(|node| address(node, auth.tls));
    let mut builder = ClusterClient::builder(nodes)
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.response_timeout)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(20)
        .max_retry_wait(500);
    if let Some(username) = &auth.username {
        builder = builder.username(username);
    }
    if let Some(password) = &auth.password {
        builder = builder.password(password);
    }
    if auth.tls {
        builder = builder.tls(TlsMode::Secure);
    }
    builder.build()
}
