//! The composition root: turns `Settings` into concrete adapters (the only place they are
//! named), services and a pingora `Server` whose services (API and metrics listeners, and the
//! proxy when it arrives) share one shutdown: SIGTERM is graceful, SIGINT fast.
//!
//! May import: everything.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};

use crate::api::{self, ApiState};
use crate::config::Settings;
use crate::config::settings::{LogFormat, StoreBackend, redact_url_password};
use crate::domain::clock::{SharedClock, SystemClock};
use crate::domain::ports::{StoreError, TransactionStore};
use crate::service::health::Readiness;
use crate::store::instrumented::Instrumented;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::telemetry::{self, metrics};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long `/ready` waits for the store before calling it unreachable.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} (listen.{listener}): {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the store: {0}")]
    Store(#[from] StoreError),
}

/// Installs logging as configured. Separate from `run` so the CLI can log config problems too.
pub fn init_logging(settings: &Settings) {
    let format = match settings.log.format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    telemetry::init_tracing(&settings.log.level, format);
}

fn build_store(
    settings: &Settings,
    clock: SharedClock,
) -> Result<Arc<dyn TransactionStore>, AppError> {
    let retention = settings.store.retention;
    Ok(match &settings.store.backend {
        StoreBackend::Memory => Arc::new(Instrumented::new(MemoryStore::new(clock, retention))),
        StoreBackend::Redis(redis) => Arc::new(Instrumented::new(RedisStore::new(
            redis.clone(),
            clock,
            retention,
        )?)),
    })
}

fn describe_store(settings: &Settings) -> String {
    match &settings.store.backend {
        StoreBackend::Memory => "memory".to_owned(),
        StoreBackend::Redis(redis) => format!(
            "redis {} prefix {}",
            redact_url_password(&redis.url),
            redis.key_prefix
        ),
    }
}

/// Binds before the server starts, so a taken port fails the boot with a clear message instead
/// of a background task dying later.
fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    let socket = TcpListener::bind(addr).map_err(|source| AppError::Bind {
        listener,
        addr,
        source,
    })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| AppError::Bind {
            listener,
            addr,
            source,
        })?;
    Ok(socket)
}

/// An axum router served on a pre-bound socket as a pingora background service.
struct HttpListener {
    name: &'static str,
    socket: Mutex<Option<TcpListener>>,
    router: axum::Router,
}

#[async_trait]
impl BackgroundService for HttpListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let socket = self.socket.lock().ok().and_then(|mut slot| slot.take());
        let Some(socket) = socket else { return };
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(listener = self.name, %error, "cannot serve");
                return;
            }
        };
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(error) = axum::serve(listener, self.router.clone())
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(listener = self.name, %error, "listener stopped");
        }
        tracing::info!(listener = self.name, "listener drained");
    }
}

fn http_service(
    name: &'static str,
    socket: TcpListener,
    router: axum::Router,
) -> impl pingora::services::ServiceWithDependents {
    background_service(
        name,
        HttpListener {
            name,
            socket: Mutex::new(Some(socket)),
            router,
        },
    )
}

/// Runs the gateway until SIGTERM (graceful) or SIGINT (fast).
pub fn run(settings: Settings) -> Result<(), AppError> {
    // Both rustls users (pingora, outbound clients) must agree on one provider; a second call
    // finds it installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    metrics::register_all();
    metrics::record_build_info(VERSION);

    let clock: SharedClock = Arc::new(SystemClock);
    let store = build_store(&settings, clock)?;
    let readiness = Readiness::new(store.clone(), READINESS_TIMEOUT);

    let api_socket = bind("api", settings.listen.api)?;
    let metrics_socket = bind("metrics", settings.listen.metrics)?;

    let conf = ServerConf {
        threads: settings.server.threads,
        grace_period_seconds: Some(settings.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(
            settings.server.graceful_shutdown_timeout.as_secs(),
        ),
        // Several gateways may run on one host: keep pingora's files per process.
        upgrade_sock: format!("/tmp/stepgate-upgrade-{}.sock", std::process::id()),
        pid_file: format!("/tmp/stepgate-{}.pid", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    server.add_service(http_service(
        "api",
        api_socket,
        api::router(ApiState { readiness }),
    ));
    server.add_service(http_service(
        "metrics",
        metrics_socket,
        telemetry::http::router(),
    ));

    tracing::info!(
        version = VERSION,
        config = %settings.source.display(),
        api = %settings.listen.api,
        metrics = %settings.listen.metrics,
        store = %describe_store(&settings),
        "stepgate starting"
    );
    server.run(RunArgs::default());
    tracing::info!("stepgate stopped");
    Ok(())
}
