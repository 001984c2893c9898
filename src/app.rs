//! The composition root: turns `Settings` into concrete adapters (the only place they are
//! named), services and a pingora `Server` whose services (the proxy, the API and metrics
//! listeners, the policy reloader) share one shutdown: SIGTERM is graceful, SIGINT fast.
//!
//! May import: everything.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};

use crate::api::admin::AdminState;
use crate::api::availability::AvailabilityState;
use crate::api::device::DeviceApiState;
use crate::api::end_user::EndUserState;
use crate::api::mobile_auth::MobileAuthState;
use crate::api::{self, ApiState};
use crate::config::Settings;
use crate::config::env::{EnvSource, ProcessEnv};
use crate::config::reload::{self, PolicyHandle};
use crate::config::settings::ApiScope;
use crate::config::settings::{LogFormat, StoreBackend};
use crate::domain::callback::CallbackQueue;
use crate::domain::clock::{SharedClock, SystemClock};
use crate::domain::code::CodeHasher;
use crate::domain::ports::{AccountGuardStore, AdminStore, TransactionSignals};
use crate::domain::ports::{
    DeviceStore, HeldRequestStore, RateLimitStore, StoreError, TransactionStore,
};
use crate::notify::{self, NotifyError};
use crate::proxy::{ProxyState, StepGateProxy};
use crate::service::admin::AdminService;
use crate::service::availability::AvailabilityService;
use crate::service::callbacks::{CallbackService, CallbackWorkerOptions};
use crate::service::devices::{DeviceService, EnrollmentRules};
use crate::service::end_user::EndUserDevices;
use crate::service::guard::AccountGuard;
use crate::service::health::Readiness;
use crate::service::otp::OtpService;
use crate::service::push::PushService;
use crate::service::sms::{SmsLimits, SmsService};
use crate::service::stepup::StepUpService;
use crate::service::transactions::TransactionEngine;
use crate::store::callbacks::memory::MemoryCallbackQueue;
use crate::store::callbacks::redis::RedisCallbackQueue;
use crate::store::devices::memory::MemoryDeviceStore;
use crate::store::devices::redis::RedisDeviceStore;
use crate::store::guard::{MemoryGuardStore, RedisGuardStore};
use crate::store::instrumented::Instrumented;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::telemetry::audit::{self, AuditRecord};
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
    #[error("outbound provider (SMS, push or callbacks): {0}")]
    Notify(#[from] NotifyError),
    #[error("cannot start a runtime for the start-up checks: {0}")]
    Runtime(std::io::Error),
    #[error("secure-message context: {0}")]
    Enrich(#[from] crate::enrich::EnrichError),
}

/// Installs logging as configured. Separate from `run` so the CLI can log config problems too.
pub fn init_logging(settings: &Settings) {
    let format = match settings.log.format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    telemetry::init_tracing(&settings.log.level, format);
}

/// The configured store, behind both ports it serves.
struct Stores {
    transactions: Arc<dyn TransactionStore>,
    rate_limits: Arc<dyn RateLimitStore>,
    held: Arc<dyn HeldRequestStore>,
    devices: Arc<dyn DeviceStore>,
    callbacks: Arc<dyn CallbackQueue>,
    admin: Arc<dyn AdminStore>,
    guard: Arc<dyn AccountGuardStore>,
    /// Wakes waiting requests when their transaction is decided.
    signals: Arc<dyn TransactionSignals>,
}

fn build_store(settings: &Settings, clock: SharedClock) -> Result<Stores, AppError> {
    let retention = settings.store.retention;
    Ok(match &settings.store.backend {
        StoreBackend::Memory => {
            let memory = MemoryStore::new(clock.clone(), retention);
            let signals = Arc::new(memory.signals());
            let store = Arc::new(Instrumented::new(memory));
            Stores {
                signals,
                transactions: store.clone(),
                rate_limits: store.clone(),
                admin: store.clone(),
                held: store,
                devices: Arc::new(Instrumented::with_backend(
                    MemoryDeviceStore::new(clock.clone()),
                    "memory",
                )),
                guard: Arc::new(MemoryGuardStore::new(clock)),
                callbacks: Arc::new(MemoryCallbackQueue::new()),
            }
        }
        StoreBackend::Redis(redis) => {
            let redis_store = RedisStore::new(redis.clone(), clock.clone(), retention)?;
            let signals = Arc::new(redis_store.signals());
            let store = Arc::new(Instrumented::new(redis_store));
            // Devices and callbacks share one more connection of their own.
            let shared = Arc::new(RedisStore::new(redis.clone(), clock.clone(), retention)?);
            Stores {
                signals,
                transactions: store.clone(),
                rate_limits: store.clone(),
                admin: store.clone(),
                held: store,
                devices: Arc::new(Instrumented::with_backend(
                    RedisDeviceStore::new(shared.clone(), clock.clone()),
                    "redis",
                )),
                guard: Arc::new(RedisGuardStore::new(shared.clone(), clock)),
                callbacks: Arc::new(RedisCallbackQueue::new(shared)),
            }
        }
    })
}

fn describe_store(settings: &Settings) -> String {
    match &settings.store.backend {
        StoreBackend::Memory => "memory".to_owned(),
        StoreBackend::Redis(redis) => format!(
            "redis {} prefix {}",
            crate::store::redis::describe(redis),
            redis.key_prefix
        ),
    }
}

/// Proves the SMS gateway can work before anything listens (wrong Twilio credentials fail the
/// boot, not the first payment). Runs on a throw-away runtime: its client dies with it, and the
/// gateway's own client makes its connections later, on the runtime that sends.
fn check_sms_gateway(settings: &Settings) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(notify::sms::startup_check_with_proxy(
        &settings.sms,
        settings.outgoing_proxy.as_ref(),
    ))?;
    Ok(())
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
        if let Err(error) = axum::serve(
            listener,
            self.router
                .clone()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
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

/// Reloads route policies on SIGHUP and when their files change.
struct PolicyReloader {
    handle: PolicyHandle,
    source: std::path::PathBuf,
    interval: Option<Duration>,
}

#[async_trait]
impl BackgroundService for PolicyReloader {
    async fn start(&self, shutdown: ShutdownWatch) {
        let env: Arc<dyn EnvSource + Send + Sync> = Arc::new(ProcessEnv);
        reload::watch_with(
            self.handle.clone(),
            self.source.clone(),
            env,
            self.interval,
            shutdown,
            |result| metrics::policy_reload(result.ok()),
        )
        .await;
    }
}

/// Tells the proxy's waiting hold-mode requests when the server begins to stop, so they answer
/// before their connections are closed.
struct StopRelay(tokio::sync::watch::Sender<bool>);

#[async_trait]
impl BackgroundService for StopRelay {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let _ = self.0.send(true);
    }
}

/// Delivers portal callbacks from the durable queue for as long as the server runs.
struct CallbackWorker(CallbackService);

#[async_trait]
impl BackgroundService for CallbackWorker {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

/// Audit records waiting for the store; past this, emitting drops them (their log lines stay).
const AUDIT_QUEUE: usize = 4096;

/// Whether an API client may call the admin API; without one its listener is not bound.
fn admin_enabled(settings: &Settings) -> bool {
    settings
        .api_clients
        .iter()
        .any(|client| client.apis.contains(&ApiScope::Admin))
}

fn bind_admin(settings: &Settings) -> Result<TcpListener, AppError> {
    let addr = settings.listen.admin;
    if !addr.ip().is_loopback() {
        tracing::warn!(admin = %addr, "the admin API listens beyond loopback: restrict its network and its clients' allowed_networks");
    }
    bind("admin", addr)
}

/// The admin listener, and the worker that stores audit events for it to show.
fn add_admin_services(
    server: &mut Server,
    socket: TcpListener,
    settings: &Settings,
    admin: AdminService,
    guard: AccountGuard,
    policies: PolicyHandle,
) {
    match audit::install_sink(AUDIT_QUEUE) {
        Some(records) => {
            server.add_service(background_service(
                "audit",
                AuditWorker {
                    admin: admin.clone(),
                    records: Mutex::new(Some(records)),
                },
            ));
        }
        None => tracing::warn!(
            "audit events already go to another sink; the admin API will not show them"
        ),
    }
    let state = Arc::new(AdminState {
        clients: settings.api_clients.clone(),
        admin,
        guard,
        policies,
        config_source: settings.source.clone(),
        env: Arc::new(ProcessEnv),
    });
    server.add_service(http_service("admin", socket, api::admin::router(state)));
    tracing::info!(admin = %settings.listen.admin, "admin API enabled");
}

/// Moves audit events from the telemetry sink into the store for as long as the server runs.
struct AuditWorker {
    admin: AdminService,
    records: Mutex<Option<tokio::sync::mpsc::Receiver<AuditRecord>>>,
}

#[async_trait]
impl BackgroundService for AuditWorker {
    async fn start(&self, shutdown: ShutdownWatch) {
        let records = self.records.lock().ok().and_then(|mut slot| slot.take());
        if let Some(records) = records {
            self.admin.drain_audit(records, shutdown).await;
        }
    }
}

/// Runs the gateway until SIGTERM (graceful) or SIGINT (fast).
pub fn run(settings: Settings) -> Result<(), AppError> {
    // Both rustls users (pingora, outbound clients) must agree on one provider; a second call
    // finds it installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    metrics::register_all();
    metrics::record_build_info(VERSION);

    let clock: SharedClock = Arc::new(SystemClock);
    let stores = build_store(&settings, clock.clone())?;
    let admin = AdminService::new(
        stores.admin.clone(),
        stores.transactions.clone(),
        stores.devices.clone(),
        clock.clone(),
    );
    let readiness = Readiness::new(stores.transactions.clone(), READINESS_TIMEOUT);
    let guard = AccountGuard::new(
        stores.guard.clone(),
        clock.clone(),
        settings.account_guard,
        &settings.secret_key,
    );
    let engine = TransactionEngine::new(
        stores.transactions.clone(),
        clock.clone(),
        CodeHasher::new(&settings.secret_key),
    )
    .with_guard(guard.clone());
    let sms_sender =
        notify::sms::build_with_proxy(&settings.sms, settings.outgoing_proxy.as_ref())?;
    check_sms_gateway(&settings)?;
    let limits = SmsLimits {
        per_user: settings.rate_limits.sms_per_user,
        per_phone: settings.rate_limits.sms_per_phone,
        global: settings.rate_limits.sms_global,
        per_country: settings.rate_limits.sms_per_country,
        per_client_ip: settings.rate_limits.sms_per_client_ip,
        destinations: settings.sms_destinations.clone(),
    };
    let origin_host = settings.sms.origin_bound_host.clone();
    let sms = SmsService::new(
        engine.clone(),
        sms_sender,
        stores.rate_limits.clone(),
        limits,
        origin_host,
        &settings.secret_key,
    );
    let callbacks = CallbackService::new(
        stores.callbacks.clone(),
        // Portals are usually reached inside the network, not through the outgoing proxy
        // that APNs, FCM and SMS gateways need.
        Arc::new(notify::callback::CallbackSender::new(
            &settings.callbacks,
            None,
            &[
                settings.listen.proxy,
                settings.listen.api,
                settings.listen.metrics,
                settings.listen.admin,
            ],
        )?),
        clock.clone(),
        CallbackWorkerOptions::new(settings.callbacks.max_attempts, settings.callbacks.timeout),
    );
    let devices = DeviceService::new(
        stores.devices.clone(),
        clock.clone(),
        settings.secret_key.clone(),
        settings.applications.clone(),
        EnrollmentRules {
            enabled: settings.enrollment.enabled,
            code_ttl: settings.enrollment.code_ttl,
            unique_keys_per_enrollment: settings.enrollment.unique_keys_per_enrollment,
            push_enrollment_enabled: settings.enrollment.push_enrollment_enabled,
            mode: settings.enrollment.mode,
        },
    );
    let push = PushService::new(
        engine.clone(),
        devices.clone(),
        Arc::new(notify::push::build(&settings)?),
        settings.auth_types.clone(),
        callbacks.clone(),
        clock.clone(),
        settings.enrollment.push_authorization_enabled,
    );
    let otp = OtpService::new(
        stores.transactions.clone(),
        clock.clone(),
        &settings.secret_key,
        callbacks.clone(),
        settings.otp.deep_link_scheme.clone(),
    )
    .with_guard(guard.clone());
    let stepup = StepUpService::new(
        settings.auth_types.clone(),
        engine,
        sms.clone(),
        stores.held.clone(),
        clock,
        &settings.secret_key,
    )
    .with_push(push.clone())
    .with_otp(otp.clone())
    .with_assertions(settings.proxy.assertion.clone())
    .with_signals(stores.signals.clone());
    let mobile_auth = Arc::new(MobileAuthState {
        enabled: settings.features.mobile_authentication,
        clients: settings.api_clients.clone(),
        auth_types: settings.auth_types.clone(),
        max_message_length: settings.max_message_length,
        sms,
        push: push.clone(),
        otp: otp.clone(),
        callbacks: settings.callbacks.clone(),
        public_url: settings.public_url.clone(),
        secure_context: secure_context(&settings)?,
        trusted_proxies: settings.api_trusted_proxies.clone(),
    });
    let availability = Arc::new(AvailabilityState {
        enabled: settings.features.mobile_authentication,
        clients: settings.api_clients.clone(),
        service: AvailabilityService::new(
            push.clone(),
            settings.enrollment.push_authorization_enabled,
        ),
        applications: settings.applications.clone(),
        mode: settings.enrollment.mode,
    });
    let end_user = Arc::new(EndUserState {
        clients: settings.api_clients.clone(),
        devices: EndUserDevices::new(devices.clone()),
    });
    let device_api = Arc::new(DeviceApiState { devices, push, otp });
    let policies = PolicyHandle::new(settings.policies.clone());

    // pingora binds the proxy listener itself when it starts; a trial bind here turns a taken
    // port into a clear boot error instead of a panic inside the server.
    if settings.proxy.upstream.is_some() {
        drop(bind("proxy", settings.listen.proxy)?);
    }
    let api_socket = bind("api", settings.listen.api)?;
    let metrics_socket = bind("metrics", settings.listen.metrics)?;
    let admin_socket = admin_enabled(&settings)
        .then(|| bind_admin(&settings))
        .transpose()?;

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
        api::router(ApiState {
            readiness,
            mobile_auth,
            device: device_api,
            availability,
            end_user,
            minimum_api_version: settings.minimum_api_version,
        }),
    ));
    server.add_service(background_service("callbacks", CallbackWorker(callbacks)));
    server.add_service(http_service(
        "metrics",
        metrics_socket,
        telemetry::http::router(),
    ));
    match admin_socket {
        Some(socket) => add_admin_services(
            &mut server,
            socket,
            &settings,
            admin,
            guard,
            policies.clone(),
        ),
        None => tracing::info!("admin API off: no api client has apis: [admin]"),
    }

    if let Some(upstream) = &settings.proxy.upstream {
        let (stopping_sender, stopping) = tokio::sync::watch::channel(false);
        server.add_service(background_service("stop-relay", StopRelay(stopping_sender)));
        let state = Arc::new(ProxyState {
            stopping,
            policies: policies.clone(),
            stepup,
            identity: settings
                .proxy
                .identity
                .clone()
                .map(crate::proxy::identity::IdentitySource::new),
            upstream: upstream.clone(),
            trusted_proxies: settings.proxy.trusted_proxies.clone(),
            router: upstream.router,
            max_held_body_bytes: settings.proxy.max_held_body_bytes,
            login_url: settings.proxy.login_url.clone(),
            max_message_length: settings.max_message_length,
        });
        let mut proxy = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            StepGateProxy::new(state),
            "proxy",
        );
        proxy.add_tcp(&settings.listen.proxy.to_string());
        server.add_service(proxy);
        // A config built in memory (the demo) has no files to watch.
        let reloadable = settings.source.is_file();
        if reloadable {
            server.add_service(background_service(
                "policy-reload",
                PolicyReloader {
                    handle: policies,
                    source: settings.source.clone(),
                    interval: settings.proxy.reload_interval,
                },
            ));
        }
        metrics::policy_rules(settings.policies.policies.len());
        tracing::info!(
            proxy = %settings.listen.proxy,
            upstream = %upstream.address,
            rules = settings.policies.policies.len(),
            "proxy enabled"
        );
    } else {
        tracing::info!("proxy disabled: no proxy.upstream configured (API only)");
    }

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

/// The secure-message context when `features.geolocation` is on: user agents and the
/// database that config opened and checked.
fn secure_context(
    settings: &Settings,
) -> Result<Option<Arc<dyn crate::domain::context::SecureMessageContext>>, AppError> {
    if !settings.features.geolocation {
        return Ok(None);
    }
    let builder = crate::enrich::SecureMessageBuilder::new(&settings.geolocation)?;
    if let Some(database) = &settings.geolocation.database {
        tracing::info!(database = ?database, "geolocation: secure messages carry device and location");
    }
    Ok(Some(Arc::new(builder)))
}
