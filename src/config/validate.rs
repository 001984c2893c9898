//! Checks a parsed config file as a whole and compiles it into `Settings`. Every problem is
//! collected with its config path; none stops the others from being found.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use super::schema::{self, ConfigFile};
use super::settings::{
    ApiClient, ApiScope, CallbackEndpoint, CallbackSettings, ClusterSettings, Features, Limit,
    ListenAddrs, LogFormat, LogSettings, RateLimits, RedisAuth, RedisDurability, RedisMode,
    RedisNode, RedisSettings, SentinelSettings, ServerSettings, Settings, StoreBackend,
    StoreSettings,
};
use super::settings::{
    BodyTemplate, FileGatewaySettings, HttpAuth, HttpBodyFormat, HttpGatewaySettings, SmsGateway,
    SmsSettings, TemplatePart, TwilioSettings,
};
use crate::domain::auth_type::{
    AuthType, AuthTypeError, AuthTypes, CODE_PLACEHOLDER, FALLBACK_LANGUAGE, Method, NumberMatching,
};
use crate::domain::code::SecretKey;
use crate::domain::destination::{self, DestinationRules};
use crate::domain::guard::GuardRules;
use crate::domain::policy::{
    BoundField, Decision, HostPattern, Matcher, Mode, PathPattern, Policy, PolicySet, StepUp,
};

mod devices;
mod geolocation;
mod proxy;
mod push;

pub use self::proxy::jwks_keys;

/// One problem: the config path it concerns and what is wrong, ending in what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

const MAX_TTL_SECONDS: u64 = 24 * 3600;
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Compiles `file` (already overlaid with the environment) or returns every problem found.
pub fn compile(file: ConfigFile, source: &Path) -> Result<Settings, Vec<Problem>> {
    let mut problems = Problems::default();
    let admin_enabled = file.api_clients.iter().any(|client| {
        client
            .apis
            .iter()
            .any(|api| api == ApiScope::Admin.as_str())
    });
    let listen = listen(&file.listen, admin_enabled, &mut problems);
    let public_url = public_url(&file, listen.as_ref(), &mut problems);
    let secret_key = secret_key(file.secret_key.as_deref(), &mut problems);
    let server = server(&file.server, &mut problems);
    let log = log(&file.log, &mut problems);
    let store = store(&file.store, &mut problems);
    let max_message_length = file.api.max_message_length as usize;
    if !(1..=1600).contains(&max_message_length) {
        problems.add(
            "api.max_message_length",
            format!("{max_message_length} is out of range (expected 1 to 1600)"),
        );
    }
    let minimum_api_version = file.api.minimum_version;
    if !(2..=4).contains(&minimum_api_version) {
        problems.add(
            "api.minimum_version",
            format!("{minimum_api_version} is out of range (expected 2, 3 or 4)"),
        );
    }
    let api_clients = api_clients(&file.api_clients, &mut problems);
    let auth_types = auth_types(&file.auth_types, max_message_length, &mut problems);
    let uses_callbacks = file
        .auth_types
        .iter()
        .any(|auth_type| auth_type.method.starts_with("push") || auth_type.method == "otp");
    let callbacks = callbacks(&file.callbacks, uses_callbacks, &mut problems);
    let rate_limits = rate_limits(&file.rate_limits, &mut problems);
    let account_guard = account_guard(&file.account_guard, &mut problems);
    let sms_destinations = sms_guard(&file.sms_guard, &mut problems);
    let api_trusted_proxies = api_trusted_proxies(&file.api.trusted_proxies, &mut problems);
    let sms = sms(&file.sms, &mut problems);
    let default_decision = default_action(&file.proxy, &mut problems);
    let base = source.parent().unwrap_or_else(|| Path::new("."));
    let proxy = proxy::compile(&file.proxy, base, public_url.as_ref(), &mut problems);
    let push_configs = push::compile(&file.push_configs, base, &mut problems);
    let outgoing_proxy = push::outgoing_proxy(&file.outgoing_proxy, &mut problems);
    let applications = devices::applications(&file.applications, &file.push_configs, &mut problems);
    let enrollment = devices::enrollment(&file.enrollment, &mut problems);
    let geolocation = geolocation::compile(
        &file.geolocation,
        file.features.geolocation,
        base,
        &mut problems,
    );
    let otp = otp(&file.otp, &mut problems);
    let mut policy_names = HashSet::new();
    let (inline_policies, policy_problems) =
        policies(&file.policies, auth_types.as_ref(), &mut policy_names);
    problems.0.extend(policy_problems);
    for (i, pattern) in file.proxy.policy_files.iter().enumerate() {
        if pattern.trim().is_empty() || glob::Pattern::new(pattern).is_err() {
            problems.add(
                format!("proxy.policy_files[{i}]"),
                format!("'{pattern}' is not a file pattern (expected e.g. policies/*.yaml)"),
            );
        }
    }

    match (
        listen, public_url, secret_key, server, log, store, auth_types, sms, proxy,
    ) {
        (
            Some(listen),
            Some(public_url),
            Some(secret_key),
            Some(server),
            Some(log),
            Some(store),
            Some(auth_types),
            Some(sms),
            Some(proxy),
        ) if problems.0.is_empty() => Ok(Settings {
            source: source.to_path_buf(),
            listen,
            public_url,
            secret_key,
            server,
            log,
            store,
            features: Features {
                mobile_authentication: file.features.mobile_authentication,
                geolocation: file.features.geolocation,
            },
            max_message_length,
            minimum_api_version,
            api_clients,
            auth_types,
            callbacks,
            rate_limits,
            account_guard,
            sms_destinations,
            api_trusted_proxies,
            sms,
            policies: PolicySet {
                policies: inline_policies,
                default: default_decision,
            },
            proxy,
            push_configs,
            outgoing_proxy,
            applications,
            enrollment,
            geolocation,
            otp,
        }),
        _ => Err(problems.0),
    }
}

fn socket_addr(path: &str, text: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match SocketAddr::from_str(text.trim()) {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.add(path, format!("'{text}' is not a listen address (expected host:port with an IP address, such as 127.0.0.1:8080 or [::1]:8080)"));
            None
        }
    }
}

/// The listen addresses. The admin listener takes part in the distinct-address check only when
/// it will be bound (`admin_enabled`: some API client has the `admin` scope).
fn listen(
    listen: &schema::Listen,
    admin_enabled: bool,
    problems: &mut Problems,
) -> Option<ListenAddrs> {
    let proxy = socket_addr("listen.proxy", &listen.proxy, problems);
    let api = socket_addr("listen.api", &listen.api, problems);
    let metrics = socket_addr("listen.metrics", &listen.metrics, problems);
    let admin = socket_addr("listen.admin", &listen.admin, problems);
    let (proxy, api, metrics, admin) = (proxy?, api?, metrics?, admin?);
    let mut named = vec![
        ("listen.proxy", proxy),
        ("listen.api", api),
        ("listen.metrics", metrics),
    ];
    if admin_enabled {
        named.push(("listen.admin", admin));
    }
    let mut clash = false;
    for (i, (path, addr)) in named.iter().enumerate() {
        if let Some((other, _)) = named[..i]
            .iter()
            .find(|(_, earlier)| earlier == addr && addr.port() != 0)
        {
            problems.add(
                *path,
                format!(
                    "{addr} is already used by {other} (expected a distinct address per listener)"
                ),
            );
            clash = true;
        }
    }
    (!clash).then_some(ListenAddrs {
        proxy,
        api,
        metrics,
        admin,
    })
}

fn http_url(path: &str, text: &str, problems: &mut Problems) -> Option<Url> {
    match Url::parse(text.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) | Err(_) => {
            problems.add(
                path,
                format!("'{text}' is not an http(s) URL (expected e.g. https://gate.example.com)"),
            );
            None
        }
    }
}

fn public_url(
    file: &ConfigFile,
    listen: Option<&ListenAddrs>,
    problems: &mut Problems,
) -> Option<Url> {
    match &file.public_url {
        Some(text) => http_url("public_url", text, problems),
        None => listen.and_then(|l| Url::parse(&format!("http://{}", l.api)).ok()),
    }
}

fn secret_key(secret: Option<&str>, problems: &mut Problems) -> Option<SecretKey> {
    match secret {
        None | Some("") => {
            problems.add("secret_key", format!("missing (expected at least {} random bytes here or in STEPGATE_SECRET_KEY; e.g. `openssl rand -hex 32`)", SecretKey::MIN_LEN));
            None
        }
        Some(text) if text.len() < SecretKey::MIN_LEN => {
            problems.add(
                "secret_key",
                format!(
                    "too short: {} bytes (expected at least {})",
                    text.len(),
                    SecretKey::MIN_LEN
                ),
            );
            None
        }
        Some(text) => Some(SecretKey::new(text.as_bytes().to_vec())),
    }
}

fn server(server: &schema::Server, problems: &mut Problems) -> Option<ServerSettings> {
    if !(1..=256).contains(&server.threads) {
        problems.add(
            "server.threads",
            format!("{} is out of range (expected 1 to 256)", server.threads),
        );
        return None;
    }
    Some(ServerSettings {
        threads: server.threads as usize,
        grace_period: Duration::from_secs(server.grace_period_seconds),
        graceful_shutdown_timeout: Duration::from_secs(server.graceful_shutdown_timeout_seconds),
    })
}

fn log(log: &schema::Log, problems: &mut Problems) -> Option<LogSettings> {
    let level = log.level.trim().to_ascii_lowercase();
    let level_ok = LOG_LEVELS.contains(&level.as_str());
    if !level_ok {
        problems.add(
            "log.level",
            format!(
                "unknown level '{}' (expected one of {}; use RUST_LOG for per-module filters)",
                log.level,
                LOG_LEVELS.join(", ")
            ),
        );
    }
    let format = match log.format.as_str() {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => {
            problems.add(
                "log.format",
                format!("unknown format '{other}' (expected text or json)"),
            );
            None
        }
    };
    Some(LogSettings {
        level,
        format: format?,
    })
    .filter(|_| level_ok)
}

/// `store.redis.mode` with its section; the other mode's section must stay empty.
fn redis_mode(redis: &schema::Redis, problems: &mut Problems) -> Option<RedisMode> {
    let before = problems.0.len();
    let data_auth = RedisAuth {
        username: redis.username.clone().filter(|name| !name.is_empty()),
        password: redis
            .password
            .clone()
            .filter(|password| !password.is_empty()),
        tls: redis.tls,
    };
    let sentinel = &redis.sentinel;
    let sentinel_set = !sentinel.master_name.is_empty()
        || !sentinel.nodes.is_empty()
        || sentinel.username.is_some()
        || sentinel.password.is_some()
        || sentinel.tls;
    let cluster_set = !redis.cluster.nodes.is_empty();
    let mode = redis.mode.trim();
    if mode != "sentinel" && sentinel_set {
        problems.add(
            "store.redis.sentinel",
            format!("set, but mode is {mode} (expected mode: sentinel, or no sentinel section)"),
        );
    }
    if mode != "cluster" && cluster_set {
        problems.add(
            "store.redis.cluster",
            format!("set, but mode is {mode} (expected mode: cluster, or no cluster section)"),
        );
    }
    if mode != "sentinel" && redis.db != 0 {
        problems.add(
            "store.redis.db",
            "only for mode: sentinel (standalone: the database is in url; a cluster has only 0)",
        );
    }
    let mode = match mode {
        "standalone" => {
            for (field, set) in [
                ("username", redis.username.is_some()),
                ("password", redis.password.is_some()),
                ("tls", redis.tls),
            ] {
                if set {
                    problems.add(
                        format!("store.redis.{field}"),
                        "only for mode: sentinel or cluster (standalone: in url, e.g. rediss://user:password@host:6379/0, or STEPGATE_REDIS_URL)",
                    );
                }
            }
            Some(RedisMode::Standalone)
        }
        "sentinel" => {
            if sentinel.master_name.trim().is_empty() {
                problems.add(
                    "store.redis.sentinel.master_name",
                    "missing (expected the name the Sentinels monitor the primary under)",
                );
            }
            let sentinels = redis_nodes(&sentinel.nodes, "store.redis.sentinel.nodes", problems);
            if !(0..=i64::from(u16::MAX)).contains(&redis.db) {
                problems.add(
                    "store.redis.db",
                    format!("{} is out of range (expected 0 or more)", redis.db),
                );
            }
            Some(RedisMode::Sentinel(Box::new(SentinelSettings {
                master_name: sentinel.master_name.trim().to_owned(),
                sentinels,
                sentinel_auth: RedisAuth {
                    username: sentinel.username.clone().filter(|name| !name.is_empty()),
                    password: sentinel.password.clone().filter(|p| !p.is_empty()),
                    tls: sentinel.tls,
                },
                data_auth,
                db: redis.db,
            })))
        }
        "cluster" => {
            let nodes = redis_nodes(&redis.cluster.nodes, "store.redis.cluster.nodes", problems);
            Some(RedisMode::Cluster(ClusterSettings { nodes, data_auth }))
        }
        other => {
            problems.add(
                "store.redis.mode",
                format!("unknown mode '{other}' (expected standalone, sentinel or cluster)"),
            );
            None
        }
    };
    mode.filter(|_| problems.0.len() == before)
}

/// A non-empty list of `host:port` (IPv6 in brackets).
fn redis_nodes(nodes: &[String], path: &str, problems: &mut Problems) -> Vec<RedisNode> {
    if nodes.is_empty() {
        problems.add(
            path,
            "missing (expected a list of host:port, e.g. [\"10.0.0.1:26379\"])",
        );
    }
    let mut parsed = Vec::new();
    for (i, text) in nodes.iter().enumerate() {
        let node = text.trim().rsplit_once(':').and_then(|(host, port)| {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let port = port.parse::<u16>().ok().filter(|port| *port > 0)?;
            let valid = !host.is_empty()
                && (host.parse::<std::net::IpAddr>().is_ok()
                    || host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
            valid.then(|| RedisNode {
                host: host.to_owned(),
                port,
            })
        });
        match node {
            Some(node) => parsed.push(node),
            None => problems.add(
                format!("{path}[{i}]"),
                format!("'{text}' is not host:port (expected e.g. 10.0.0.1:6379 or [::1]:6379)"),
            ),
        }
    }
    parsed
}

fn store(store: &schema::Store, problems: &mut Problems) -> Option<StoreSettings> {
    let redis = &store.redis;
    let mut redis_ok = true;
    match redis::Client::open(redis.url.as_str()) {
        Ok(_) => {}
        Err(err) => {
            redis_ok = false;
            let shown = super::settings::redact_url_password(&redis.url);
            problems.add("store.redis.url", format!("'{shown}' is not a redis URL: {} (expected redis://host:port/db or rediss://host:port/db)", err.detail().unwrap_or("invalid URL")));
        }
    }
    if redis.url.contains("#insecure") {
        redis_ok = false;
        problems.add("store.redis.url", "certificate checks cannot be switched off (expected a rediss:// server whose certificate the system trusts; point SSL_CERT_FILE at a private CA)");
    }
    if redis.key_prefix.is_empty() || redis.key_prefix.chars().any(char::is_whitespace) {
        redis_ok = false;
        problems.add(
            "store.redis.key_prefix",
            "must be non-empty and without spaces (expected e.g. \"stepgate:\")",
        );
    }
    if redis.replicas_to_acknowledge > 16 {
        redis_ok = false;
        problems.add(
            "store.redis.replicas_to_acknowledge",
            format!(
                "{} is out of range (expected 0 to 16 replicas)",
                redis.replicas_to_acknowledge
            ),
        );
    }
    for (field, value) in [
        ("connect_timeout_ms", redis.connect_timeout_ms),
        ("response_timeout_ms", redis.response_timeout_ms),
        ("replica_ack_timeout_ms", redis.replica_ack_timeout_ms),
    ] {
        if !(1..=60_000).contains(&value) {
            redis_ok = false;
            problems.add(
                format!("store.redis.{field}"),
                format!("{value} is out of range (expected 1 to 60000)"),
            );
        }
    }
    let mode = redis_mode(redis, problems);
    let backend = match store.backend.as_str() {
        "memory" => Some(StoreBackend::Memory),
        "redis" if redis_ok => mode.map(|mode| {
            StoreBackend::Redis(RedisSettings {
                url: redis.url.clone(),
                key_prefix: redis.key_prefix.clone(),
                connect_timeout: Duration::from_millis(redis.connect_timeout_ms),
                response_timeout: Duration::from_millis(redis.response_timeout_ms),
                mode,
                durability: RedisDurability {
                    replicas: redis.replicas_to_acknowledge,
                    timeout: Duration::from_millis(redis.replica_ack_timeout_ms),
                },
            })
        }),
        "redis" => None,
        other => {
            problems.add(
                "store.backend",
                format!("unknown backend '{other}' (expected memory or redis)"),
            );
            None
        }
    };
    Some(StoreSettings {
        backend: backend?,
        retention: Duration::from_secs(store.retention_seconds),
    })
}

fn api_clients(clients: &[schema::ApiClient], problems: &mut Problems) -> Vec<ApiClient> {
    let mut seen = HashSet::new();
    let mut compiled = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let at = |field: &str| format!("api_clients[{i}].{field}");
        let mut ok = true;
        let id = client.client_id.as_str();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            ok = false;
            problems.add(
                at("client_id"),
                format!("'{id}' is not a client id (expected letters, digits, '.', '_' or '-')"),
            );
        } else if !seen.insert(id) {
            ok = false;
            problems.add(
                at("client_id"),
                format!("duplicate client id '{id}' (expected each client once)"),
            );
        }
        let secret = client.client_secret.clone().unwrap_or_default();
        if secret.len() < 16 {
            ok = false;
            let var = super::env::api_client_secret_var(id);
            problems.add(at("client_secret"), format!("missing or shorter than 16 characters (expected a random secret here or in {var})"));
        }
        let mut apis = Vec::new();
        if client.apis.is_empty() {
            ok = false;
            problems.add(
                at("apis"),
                "empty (expected at least one of mobile_authentication, end_user, admin)",
            );
        }
        for (j, api) in client.apis.iter().enumerate() {
            match ApiScope::ALL
                .into_iter()
                .find(|scope| scope.as_str() == api)
            {
                Some(scope) => apis.push(scope),
                None => {
                    ok = false;
                    problems.add(format!("api_clients[{i}].apis[{j}]"), format!("unknown API '{api}' (expected mobile_authentication, end_user or admin)"));
                }
            }
        }
        let mut allowed_networks = Vec::new();
        for (j, network) in client.allowed_networks.iter().enumerate() {
            let parsed = parse_network(network);
            match parsed {
                Ok(net) => allowed_networks.push(net),
                Err(_) => {
                    ok = false;
                    problems.add(format!("api_clients[{i}].allowed_networks[{j}]"), format!("'{network}' is not a network (expected CIDR such as 10.0.0.0/8 or an IP address)"));
                }
            }
        }
        if ok {
            compiled.push(ApiClient {
                client_id: id.to_owned(),
                client_secret: secret,
                apis,
                allowed_networks,
            });
        }
    }
    compiled
}

/// A valid SMS sender: an alphanumeric id of up to 11 characters with a letter, a 3-8 digit short
/// code, or an E.164 phone number.
fn valid_sender_id(sender: &str) -> bool {
    let alphanumeric = (1..=11).contains(&sender.len())
        && sender
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && sender.chars().any(|c| c.is_ascii_alphabetic());
    let short_code = (3..=8).contains(&sender.len()) && sender.chars().all(|c| c.is_ascii_digit());
    let phone = sender.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
    });
    alphanumeric || short_code || phone
}

fn valid_language(code: &str) -> bool {
    let mut parts = code.split('-');
    let primary_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_lowercase()));
    primary_ok
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn auth_types(
    types: &[schema::AuthType],
    max_message_length: usize,
    problems: &mut Problems,
) -> Option<AuthTypes> {
    let mut compiled = Vec::new();
    let mut all_ok = true;
    for (i, raw) in types.iter().enumerate() {
        match auth_type(i, raw, max_message_length, problems) {
            Some(auth_type) => compiled.push(auth_type),
            None => all_ok = false,
        }
    }
    let index_of = |name: &str| types.iter().position(|t| t.name == name).unwrap_or(0);
    match AuthTypes::new(compiled) {
        Ok(set) if all_ok => Some(set),
        Ok(_) => None,
        Err(errors) => {
            for error in errors {
                let (path, message) = match &error {
                    AuthTypeError::Duplicate(name) => {
                        let second = types
                            .iter()
                            .enumerate()
                            .filter(|(_, t)| &t.name == name)
                            .nth(1)
                            .map_or(0, |(i, _)| i);
                        (
                            format!("auth_types[{second}].name"),
                            format!("{error} (expected unique names)"),
                        )
                    }
                    AuthTypeError::UnknownFallback { from, .. } => {
                        let known: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
                        (
                            format!("auth_types[{}].fallback", index_of(from)),
                            format!("{error} (expected one of: {})", known.join(", ")),
                        )
                    }
                    AuthTypeError::FallbackOnOtp(name) => (
                        format!("auth_types[{}].fallback", index_of(name)),
                        format!("{error} (expected no fallback on otp types)"),
                    ),
                    AuthTypeError::FallbackCycle(cycle) => {
                        let first = cycle.first().map_or("", String::as_str);
                        (
                            format!("auth_types[{}].fallback", index_of(first)),
                            format!("{error} (expected a chain that ends)"),
                        )
                    }
                };
                problems.add(path, message);
            }
            None
        }
    }
}

fn auth_type(
    i: usize,
    raw: &schema::AuthType,
    max_message_length: usize,
    problems: &mut Problems,
) -> Option<AuthType> {
    let at = |field: &str| format!("auth_types[{i}].{field}");
    let before = problems.0.len();
    let name = raw.name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        problems.add(
            at("name"),
            format!("'{name}' is not a type name (expected letters, digits, '_' or '-')"),
        );
    }
    let method = match Method::from_str(&raw.method) {
        Ok(method) => Some(method),
        Err(_) => {
            let all: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
            problems.add(
                at("method"),
                format!(
                    "unknown method '{}' (expected one of {})",
                    raw.method,
                    all.join(", ")
                ),
            );
            None
        }
    };
    let ttl = raw
        .ttl_seconds
        .unwrap_or(schema::AuthType::DEFAULT_TTL_SECONDS);
    if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
        problems.add(
            at("ttl_seconds"),
            format!("{ttl} is out of range (expected 1 to {MAX_TTL_SECONDS})"),
        );
    }
    if let Some(sender) = &raw.sender_id {
        if method.is_some_and(|m| m != Method::Sms) {
            problems.add(
                at("sender_id"),
                "only sms types send text messages (expected no sender_id here)",
            );
        } else if !valid_sender_id(sender) {
            problems.add(at("sender_id"), format!("'{sender}' is not a sender (expected up to 11 letters/digits, a short code, or a +E.164 number)"));
        }
    }
    if method == Some(Method::Otp) && raw.max_resends.is_some_and(|n| n > 0) {
        problems.add(
            at("max_resends"),
            "otp codes are shown, not sent, so they cannot be resent (expected 0 or nothing)",
        );
    }
    let number_matching = match &raw.number_matching {
        schema::NumberMatchingSetting::Flag(false) => NumberMatching::Off,
        schema::NumberMatchingSetting::Flag(true) => NumberMatching::Type,
        schema::NumberMatchingSetting::Mode(mode) => match mode.as_str() {
            "off" => NumberMatching::Off,
            "pick" => NumberMatching::Pick,
            "type" => NumberMatching::Type,
            other => {
                problems.add(
                    at("number_matching"),
                    format!("unknown mode '{other}' (expected false, true, pick or type)"),
                );
                NumberMatching::Off
            }
        },
    };
    if number_matching.is_on() && method.is_some_and(|m| !m.is_push()) {
        problems.add(
            at("number_matching"),
            "only push types match numbers (expected false)",
        );
    }
    if raw.transaction_signing && method.is_some_and(|m| !m.is_push()) {
        problems.add(
            at("transaction_signing"),
            "only push types sign transactions (expected false)",
        );
    }
    if !raw.default_messages.is_empty() && !raw.default_messages.contains_key(FALLBACK_LANGUAGE) {
        problems.add(
            at("default_messages"),
            format!("no '{FALLBACK_LANGUAGE}' message (expected one: it is the fallback language)"),
        );
    }
    for (language, message) in &raw.default_messages {
        let path = format!("auth_types[{i}].default_messages.{language}");
        if !valid_language(language) {
            problems.add(path.clone(), format!("'{language}' is not a language code (expected lower case, such as en, nl or pt-br)"));
        }
        if message.trim().is_empty() {
            problems.add(path.clone(), "empty message (expected text)");
        }
        if message.chars().count() > max_message_length {
            problems.add(path.clone(), format!("{} characters is too long (expected at most api.max_message_length = {max_message_length})", message.chars().count()));
        }
        if method == Some(Method::Sms)
            && !message.contains(CODE_PLACEHOLDER)
            && !raw.allow_message_without_code
        {
            problems.add(path, "SMS template has no {code} placeholder, so the SMS would hold only the code (expected {code} in the text, or allow_message_without_code: true)");
        }
    }
    if problems.0.len() != before {
        return None;
    }
    Some(AuthType {
        name: name.to_owned(),
        method: method?,
        ttl: Duration::from_secs(ttl),
        max_attempts: raw
            .max_attempts
            .unwrap_or(schema::AuthType::DEFAULT_MAX_ATTEMPTS),
        max_resends: raw
            .max_resends
            .unwrap_or(schema::AuthType::DEFAULT_MAX_RESENDS),
        sender_id: raw.sender_id.clone(),
        fallback: raw.fallback.clone(),
        default_messages: raw
            .default_messages
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        transaction_signing: raw.transaction_signing,
        number_matching,
    })
}

fn callbacks(
    callbacks: &schema::Callbacks,
    uses_callbacks: bool,
    problems: &mut Problems,
) -> CallbackSettings {
    let mut seen = HashSet::new();
    let mut endpoints = Vec::new();
    for (i, endpoint) in callbacks.endpoints.iter().enumerate() {
        let Some(url) = http_url(
            &format!("callbacks.endpoints[{i}].url"),
            &endpoint.url,
            problems,
        ) else {
            continue;
        };
        if !seen.insert(url.as_str().to_owned()) {
            problems.add(
                format!("callbacks.endpoints[{i}].url"),
                format!("duplicate endpoint '{url}' (expected each URL once)"),
            );
            continue;
        }
        let basic_auth = match (&endpoint.username, &endpoint.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => {
                problems.add(
                    format!("callbacks.endpoints[{i}]"),
                    "username and password go together (expected both or neither)",
                );
                continue;
            }
        };
        endpoints.push(CallbackEndpoint { url, basic_auth });
    }
    if uses_callbacks && callbacks.only_allow_configured && callbacks.endpoints.is_empty() {
        problems.add("callbacks.only_allow_configured", "is on (the default) but no endpoints are configured, so every push and otp init would be refused (expected callbacks.endpoints with the portal's callback URLs, or only_allow_configured: false)");
    }
    let mut allowed_networks = Vec::new();
    for (i, network) in callbacks.allowed_networks.iter().enumerate() {
        match parse_network(network) {
            Ok(net) => allowed_networks.push(net),
            Err(_) => problems.add(
                format!("callbacks.allowed_networks[{i}]"),
                format!("'{network}' is not a network (expected CIDR such as 10.0.0.0/8 or an IP address)"),
            ),
        }
    }
    if !CALLBACK_MAX_ATTEMPTS.contains(&callbacks.max_attempts) {
        problems.add(
            "callbacks.max_attempts",
            format!(
                "{} is out of range (expected {} to {})",
                callbacks.max_attempts,
                CALLBACK_MAX_ATTEMPTS.start(),
                CALLBACK_MAX_ATTEMPTS.end()
            ),
        );
    }
    if !CALLBACK_TIMEOUT_MS.contains(&callbacks.timeout_ms) {
        problems.add(
            "callbacks.timeout_ms",
            format!(
                "{} is out of range (expected {} to {})",
                callbacks.timeout_ms,
                CALLBACK_TIMEOUT_MS.start(),
                CALLBACK_TIMEOUT_MS.end()
            ),
        );
    }
    CallbackSettings {
        only_allow_configured: callbacks.only_allow_configured,
        endpoints,
        allowed_networks,
        max_attempts: callbacks.max_attempts,
        timeout: Duration::from_millis(callbacks.timeout_ms),
    }
}

/// With the 5-minute cap on the backoff, 100 attempts span more than 8 hours.
const CALLBACK_MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=100;
const CALLBACK_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// A CIDR, or a bare address meaning just that host.
fn parse_network(text: &str) -> Result<IpNet, ipnet::AddrParseError> {
    IpNet::from_str(text).or_else(|error| {
        std::net::IpAddr::from_str(text)
            .map(IpNet::from)
            .map_err(|_| error)
    })
}

fn default_action(proxy: &schema::Proxy, problems: &mut Problems) -> Decision {
    match proxy.default_action.as_str() {
        "allow" => Decision::Allow,
        "deny" => Decision::Deny,
        other => {
            problems.add(
                "proxy.default_action",
                format!("unknown action '{other}' (expected allow or deny)"),
            );
            Decision::Allow
        }
    }
}

const MESSAGE_SOURCES: [&str; 3] = ["form", "query", "header"];

/// `{form.x}`, `{query.x}` and `{header.x}` are the only placeholders a policy message may use.
fn check_message_placeholders(message: &str) -> Result<(), String> {
    let mut rest = message;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in '{message}'"))?;
        let inner = &after[..close];
        let valid = inner.split_once('.').is_some_and(|(source, name)| {
            MESSAGE_SOURCES.contains(&source)
                && !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
        });
        if !valid {
            return Err(format!(
                "placeholder '{{{inner}}}' is not one of {{form.NAME}}, {{query.NAME}}, {{header.NAME}}"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Compiles a list of policies (inline, or one policy file's). `auth_types` is `None` when the
/// config's own types did not compile; references are then not checked. `names` carries the
/// names already taken, so they stay unique across files. Problem paths start at `policies`.
pub fn policies(
    entries: &[schema::PolicyEntry],
    auth_types: Option<&AuthTypes>,
    names: &mut HashSet<String>,
) -> (Vec<Policy>, Vec<Problem>) {
    let mut problems = Problems::default();
    let mut compiled = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let before = problems.0.len();
        let at = |field: &str| format!("policies[{i}].{field}");
        let name = entry.name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            problems.add(
                at("name"),
                format!(
                    "'{name}' is not a policy name (expected letters, digits, '_', '-' or '.')"
                ),
            );
        } else if !names.insert(name.to_owned()) {
            problems.add(
                at("name"),
                format!(
                    "duplicate policy name '{name}' (expected unique names across all policy files)"
                ),
            );
        }
        let raw = &entry.matcher;
        let mut matcher = Matcher::default();
        for (j, host) in raw.hosts.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                problems.add(format!("policies[{i}].match.hosts[{j}]"), format!("'{host}' is not a host (expected a name such as bank.example or *.bank.example, without port)"));
            }
            matcher.hosts.push(HostPattern::new(host));
        }
        for (j, method) in raw.methods.iter().enumerate() {
            if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
                problems.add(
                    format!("policies[{i}].match.methods[{j}]"),
                    format!("'{method}' is not an HTTP method (expected e.g. GET or POST)"),
                );
            }
            matcher.methods.push(method.to_ascii_uppercase());
        }
        for (j, path) in raw.paths.iter().enumerate() {
            if !path.starts_with('/')
                || path.contains(['?', '#'])
                || path.split('/').any(|s| s == "." || s == "..")
            {
                problems.add(format!("policies[{i}].match.paths[{j}]"), format!("'{path}' is not a path pattern (expected an absolute path such as /transfer or /api/payments/**)"));
            }
            matcher.paths.push(PathPattern::new(path));
        }
        for (j, network) in raw.networks.iter().enumerate() {
            match parse_network(network) {
                Ok(net) => matcher.networks.push(net),
                Err(_) => problems.add(
                    format!("policies[{i}].match.networks[{j}]"),
                    format!("'{network}' is not a network (expected CIDR such as 10.0.0.0/8)"),
                ),
            }
        }
        for (header, value) in &raw.headers {
            if header.is_empty()
                || !header
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.add(
                    format!("policies[{i}].match.headers.{header}"),
                    format!("'{header}' is not a header name (expected e.g. X-Env)"),
                );
            }
            matcher
                .headers
                .push((header.to_ascii_lowercase(), value.clone()));
        }
        let mode = match entry.mode.as_deref() {
            None | Some("challenge") => Mode::Challenge,
            Some("hold") => Mode::Hold,
            Some(other) => {
                problems.add(
                    at("mode"),
                    format!("unknown mode '{other}' (expected challenge or hold)"),
                );
                Mode::Challenge
            }
        };
        if let Some(message) = &entry.message
            && let Err(why) = check_message_placeholders(message)
        {
            problems.add(at("message"), format!("{why} (expected text with optional {{form.NAME}}, {{query.NAME}} or {{header.NAME}})"));
        }
        let decision = match (&entry.require, entry.action.as_deref()) {
            (Some(_), Some(action)) => {
                problems.add(
                    at("action"),
                    format!(
                        "'action: {action}' and 'require' exclude each other (expected one of them)"
                    ),
                );
                None
            }
            (None, None) => {
                problems.add(at("require"), "missing (expected require: {auth_type: ...} to demand step-up, or action: allow | deny)");
                None
            }
            (None, Some("allow")) => Some(Decision::Allow),
            (None, Some("deny")) => Some(Decision::Deny),
            (None, Some(other)) => {
                problems.add(at("action"), format!("unknown action '{other}' (expected allow or deny; step-up is written as require)"));
                None
            }
            (Some(require), None) => {
                if let Some(types) = auth_types
                    && types.get(&require.auth_type).is_none()
                {
                    let known: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
                    let expected = if known.is_empty() {
                        "an auth_types entry; none is configured".to_owned()
                    } else {
                        format!("one of: {}", known.join(", "))
                    };
                    problems.add(
                        at("require.auth_type"),
                        format!(
                            "unknown auth type '{}' (expected {expected})",
                            require.auth_type
                        ),
                    );
                }
                if require.freshness_seconds > 86_400 {
                    problems.add(
                        at("require.freshness_seconds"),
                        format!(
                            "{} is out of range (expected 0 to 86400)",
                            require.freshness_seconds
                        ),
                    );
                }
                let written: Vec<String> = match &require.bind {
                    schema::BindSetting::One(one) => vec![one.clone()],
                    schema::BindSetting::List(list) => list.clone(),
                };
                let mut bind = Vec::new();
                for (i, text) in written.iter().enumerate() {
                    let Some(field) = BoundField::parse(text.trim()) else {
                        problems.add(
                            at(&format!("require.bind[{i}]")),
                            format!("'{text}' is not a request part (expected form.NAME, query.NAME, header.NAME or body)"),
                        );
                        continue;
                    };
                    // PSD2 dynamic linking: the user must see what the approval binds.
                    if field != BoundField::Body {
                        let placeholder = format!("{{{}}}", field.label());
                        if !entry
                            .message
                            .as_deref()
                            .is_some_and(|message| message.contains(&placeholder))
                        {
                            problems.add(
                                at(&format!("require.bind[{i}]")),
                                format!("the message does not show {placeholder} (expected the policy's message to show every bound value)"),
                            );
                        }
                    }
                    if !bind.contains(&field) {
                        bind.push(field);
                    }
                }
                Some(Decision::StepUp(StepUp {
                    auth_type: require.auth_type.clone(),
                    freshness: Duration::from_secs(require.freshness_seconds),
                    mode,
                    message: entry.message.clone(),
                    bind,
                }))
            }
        };
        if let (Some(decision), true) = (decision, problems.0.len() == before) {
            compiled.push(Policy {
                name: name.to_owned(),
                matcher,
                decision,
            });
        }
    }
    (compiled, problems.0)
}

fn rate_limits(raw: &schema::RateLimits, problems: &mut Problems) -> RateLimits {
    let mut one = |name: &str, limit: &schema::RateLimit| {
        if limit.limit == 0 {
            return None;
        }
        if !(1..=86_400).contains(&limit.window_seconds) {
            problems.add(
                format!("rate_limits.{name}.window_seconds"),
                format!(
                    "{} is out of range (expected 1 to 86400)",
                    limit.window_seconds
                ),
            );
            return None;
        }
        Some(Limit {
            limit: limit.limit,
            window: Duration::from_secs(limit.window_seconds),
        })
    };
    RateLimits {
        sms_per_user: one("sms_per_user", &raw.sms_per_user),
        sms_per_phone: one("sms_per_phone", &raw.sms_per_phone),
        sms_global: one("sms_global", &raw.sms_global),
        sms_per_country: one("sms_per_country", &raw.sms_per_country),
        sms_per_client_ip: one("sms_per_client_ip", &raw.sms_per_client_ip),
    }
}

fn sms_guard(raw: &schema::SmsGuard, problems: &mut Problems) -> DestinationRules {
    let mut prefixes = |name: &str, list: &[String]| -> Vec<String> {
        let mut valid = Vec::new();
        for (i, text) in list.iter().enumerate() {
            let prefix = text.trim();
            if destination::is_prefix(prefix) {
                valid.push(prefix.to_owned());
            } else {
                problems.add(
                    format!("sms_guard.{name}[{i}]"),
                    format!(
                        "'{text}' is not an E.164 prefix (expected + and 1 to 15 digits, e.g. +31)"
                    ),
                );
            }
        }
        valid
    };
    let allowed = prefixes("allowed_prefixes", &raw.allowed_prefixes);
    let mut denied = prefixes("denied_prefixes", &raw.denied_prefixes);
    denied.extend(prefixes(
        "extra_denied_prefixes",
        &raw.extra_denied_prefixes,
    ));
    DestinationRules { allowed, denied }
}

fn api_trusted_proxies(raw: &[String], problems: &mut Problems) -> Vec<IpNet> {
    let mut trusted = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        match parse_network(text.trim()) {
            Ok(net) => trusted.push(net),
            Err(_) => problems.add(
                format!("api.trusted_proxies[{i}]"),
                format!("'{text}' is not a network (expected a CIDR such as 10.0.0.0/8)"),
            ),
        }
    }
    trusted
}

/// Every duration of `account_guard`: from a second to 30 days.
const GUARD_SECONDS: std::ops::RangeInclusive<u64> = 1..=30 * 86_400;

fn account_guard(raw: &schema::AccountGuard, problems: &mut Problems) -> GuardRules {
    let mut seconds = |name: &str, value: u64| {
        if !GUARD_SECONDS.contains(&value) {
            problems.add(
                format!("account_guard.{name}"),
                format!(
                    "{value} is out of range (expected {} to {})",
                    GUARD_SECONDS.start(),
                    GUARD_SECONDS.end()
                ),
            );
        }
        Duration::from_secs(value)
    };
    let rules = GuardRules {
        max_failures: raw.max_failures,
        lock_for: seconds("lock_seconds", raw.lock_seconds),
        forget_after: seconds("forget_after_seconds", raw.forget_after_seconds),
        max_pushes: raw.max_pushes,
        push_backoff: seconds("push_backoff_seconds", raw.push_backoff_seconds),
        max_push_backoff: seconds("max_push_backoff_seconds", raw.max_push_backoff_seconds),
        report_block: seconds("report_block_seconds", raw.report_block_seconds),
        max_pending_step_ups: raw.max_pending_step_ups,
        max_held_requests: raw.max_held_requests,
    };
    if rules.max_push_backoff < rules.push_backoff {
        problems.add(
            "account_guard.max_push_backoff_seconds",
            format!(
                "{} is below push_backoff_seconds ({})",
                raw.max_push_backoff_seconds, raw.push_backoff_seconds
            ),
        );
    }
    rules
}

const SMS_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

fn sms(raw: &schema::Sms, problems: &mut Problems) -> Option<SmsSettings> {
    let before = problems.0.len();
    if !SMS_TIMEOUT_MS.contains(&raw.timeout_ms) {
        problems.add(
            "sms.timeout_ms",
            format!(
                "{} is out of range (expected {} to {})",
                raw.timeout_ms,
                SMS_TIMEOUT_MS.start(),
                SMS_TIMEOUT_MS.end()
            ),
        );
    }
    let origin_bound_host = match raw.origin_bound_host.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(host) if valid_host_name(host) => Some(host.to_ascii_lowercase()),
        Some(host) => {
            problems.add("sms.origin_bound_host", format!("'{host}' is not a bare host name (expected the site's host such as bank.example: no scheme, port or path)"));
            None
        }
    };
    // Only the selected gateway's section has to be complete; the others are not read.
    let gateway = match raw.gateway.as_str() {
        "twilio" => twilio(&raw.twilio, problems).map(SmsGateway::Twilio),
        "http" => http_gateway(&raw.http, problems).map(SmsGateway::Http),
        "file" => file_gateway(&raw.file, problems).map(SmsGateway::File),
        "console" => Some(SmsGateway::Console),
        other => {
            problems.add(
                "sms.gateway",
                format!("unknown gateway '{other}' (expected twilio, http, file or console)"),
            );
            None
        }
    };
    if problems.0.len() != before {
        return None;
    }
    Some(SmsSettings {
        gateway: gateway?,
        timeout: Duration::from_millis(raw.timeout_ms),
        origin_bound_host,
    })
}

/// A DNS host name in ASCII (IDNs in their `xn--` form): dot-separated labels of letters, digits
/// and inner hyphens.
fn valid_host_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// An http(s) base URL without query or fragment, onto which API paths are appended.
fn base_url(path: &str, text: &str, problems: &mut Problems) -> Option<Url> {
    let url = http_url(path, text, problems)?;
    if url.query().is_some() || url.fragment().is_some() {
        problems.add(
            path,
            format!("'{text}' has a query or fragment (expected a base URL such as https://api.twilio.com)"),
        );
        return None;
    }
    Some(url)
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|value| !value.is_empty())
}

fn twilio(raw: &schema::Twilio, problems: &mut Problems) -> Option<TwilioSettings> {
    let before = problems.0.len();
    let sid = raw.account_sid.trim();
    let sid_ok =
        sid.len() == 34 && sid.starts_with("AC") && sid[2..].chars().all(|c| c.is_ascii_hexdigit());
    if sid.is_empty() {
        problems.add("sms.twilio.account_sid", "missing (expected the account SID from the Twilio console: AC followed by 32 hexadecimal characters)");
    } else if !sid_ok {
        problems.add(
            "sms.twilio.account_sid",
            format!(
                "'{sid}' is not an account SID (expected AC followed by 32 hexadecimal characters)"
            ),
        );
    }
    let auth_token = non_empty(raw.auth_token.as_deref());
    match auth_token {
        None => problems.add("sms.twilio.auth_token", format!("missing (expected the account's auth token, preferably in {})", super::env::TWILIO_AUTH_TOKEN)),
        Some(token) if token.chars().any(|c| c.is_whitespace() || c.is_control()) => problems.add(
            "sms.twilio.auth_token",
            "contains spaces or control characters (expected the token exactly as the Twilio console shows it)",
        ),
        Some(_) => {}
    }
    let from_number = raw.from_number.trim();
    if from_number.is_empty() {
        problems.add(
            "sms.twilio.from_number",
            "missing (expected a Twilio phone number in +E.164 form, such as +15005550006)",
        );
    } else if !valid_e164(from_number) {
        problems.add(
            "sms.twilio.from_number",
            format!("'{from_number}' is not a +E.164 number (expected + and 8 to 15 digits, such as +15005550006)"),
        );
    }
    let base_url = base_url("sms.twilio.base_url", &raw.base_url, problems);
    if problems.0.len() != before {
        return None;
    }
    Some(TwilioSettings {
        account_sid: sid.to_owned(),
        auth_token: auth_token?.to_owned(),
        from_number: from_number.to_owned(),
        base_url: base_url?,
    })
}

/// An RFC 9110 token: the characters a header name may hold.
pub(crate) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Visible ASCII, spaces and tabs: nothing that could end the header line.
fn valid_header_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
}

fn http_gateway(raw: &schema::SmsHttp, problems: &mut Problems) -> Option<HttpGatewaySettings> {
    let before = problems.0.len();
    let url = if raw.url.trim().is_empty() {
        problems.add(
            "sms.http.url",
            "missing (expected the URL that receives one POST per message)",
        );
        None
    } else {
        http_url("sms.http.url", &raw.url, problems)
    };
    let format = match raw.format.as_str() {
        "json" => Some(HttpBodyFormat::Json),
        "form" => Some(HttpBodyFormat::Form),
        other => {
            problems.add(
                "sms.http.format",
                format!("unknown format '{other}' (expected json or form)"),
            );
            None
        }
    };
    let username = non_empty(raw.username.as_deref());
    let password = non_empty(raw.password.as_deref());
    let bearer = non_empty(raw.bearer_token.as_deref());
    let auth = match (username, password, bearer) {
        (None, None, None) => None,
        (Some(username), Some(password), None) => Some(HttpAuth::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }),
        (None, None, Some(token)) => Some(HttpAuth::Bearer(token.to_owned())),
        (Some(_), Some(_), Some(_)) => {
            problems.add("sms.http.bearer_token", "cannot be combined with username and password (expected Basic or Bearer, not both)");
            None
        }
        (Some(_), None, _) | (None, Some(_), _) => {
            problems.add(
                "sms.http",
                format!("username and password go together (expected both or neither; the password may come from {})", super::env::SMS_HTTP_PASSWORD),
            );
            None
        }
    };
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        let path = format!("sms.http.headers.{name}");
        if !valid_header_name(name) {
            problems.add(path, format!("'{name}' is not a header name (expected letters, digits and - such as X-Api-Key)"));
        } else if !valid_header_value(value) {
            problems.add(path, "the value holds characters a header cannot carry (expected visible ASCII, spaces or tabs)");
        } else if name.eq_ignore_ascii_case("authorization") && auth.is_some() {
            problems.add(
                path,
                "clashes with username/password or bearer_token (expected one way to authenticate)",
            );
        } else {
            headers.push((name.clone(), value.clone()));
        }
    }
    let mut body = Vec::new();
    if raw.body.is_empty() {
        problems.add(
            "sms.http.body",
            "empty (expected fields such as to: \"{to}\" and text: \"{body}\")",
        );
    }
    for (field, text) in &raw.body {
        match BodyTemplate::parse(text) {
            Ok(template) => body.push((field.clone(), template)),
            Err(error) => problems.add(
                format!("sms.http.body.{field}"),
                format!(
                    "{error} (expected only the placeholders {})",
                    BodyTemplate::PLACEHOLDERS.join(", ")
                ),
            ),
        }
    }
    // Checked only when every field parsed, so one mistake is not reported three times.
    let all_parsed = !raw.body.is_empty() && body.len() == raw.body.len();
    for (placeholder, part) in [("{to}", TemplatePart::To), ("{body}", TemplatePart::Body)] {
        if all_parsed && !body.iter().any(|(_, template)| template.uses(&part)) {
            problems.add("sms.http.body", format!("no field uses {placeholder}, so the gateway could not deliver the message (expected it in one field)"));
        }
    }
    if problems.0.len() != before {
        return None;
    }
    Some(HttpGatewaySettings {
        url: url?,
        format: format?,
        auth,
        headers,
        body,
    })
}

fn file_gateway(raw: &schema::SmsFile, problems: &mut Problems) -> Option<FileGatewaySettings> {
    let path = raw.path.trim();
    if path.is_empty() {
        problems.add(
            "sms.file.path",
            "missing (expected a file path such as sms-outbox.jsonl)",
        );
        return None;
    }
    Some(FileGatewaySettings { path: path.into() })
}

/// Schemes a deep link may not use: the web's own (the link would be a page, not the app) and
/// those that run script or read files.
const FORBIDDEN_DEEP_LINK_SCHEMES: [&str; 8] = [
    "http",
    "https",
    "javascript",
    "vbscript",
    "data",
    "file",
    "about",
    "blob",
];

fn otp(raw: &schema::Otp, problems: &mut Problems) -> super::settings::OtpSettings {
    let scheme = raw.deep_link_scheme.trim().to_ascii_lowercase();
    // RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
    let well_formed = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        problems.add(
            "otp.deep_link_scheme",
            format!(
                "'{}' is not a URL scheme (expected a letter, then letters, digits, '+', '-' or '.', e.g. stepgate)",
                raw.deep_link_scheme
            ),
        );
    } else if FORBIDDEN_DEEP_LINK_SCHEMES.contains(&scheme.as_str()) {
        problems.add(
            "otp.deep_link_scheme",
            format!(
                "'{scheme}' is not an app's scheme (expected the phone app's own, e.g. stepgate)"
            ),
        );
    }
    super::settings::OtpSettings {
        deep_link_scheme: scheme,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_ids() {
        for good in ["MyBank", "My Bank 2", "12345", "+31612345678"] {
            assert!(valid_sender_id(good), "{good}");
        }
        for bad in [
            "",
            "ABCDEFGHIJKL",
            "12",
            "+123",
            "Bank!",
            "31612345678901234",
        ] {
            assert!(!valid_sender_id(bad), "{bad}");
        }
    }

    #[test]
    fn language_codes() {
        for good in ["en", "nl", "pt-br", "fil"] {
            assert!(valid_language(good), "{good}");
        }
        for bad in ["EN", "e", "english", "en_US", ""] {
            assert!(!valid_language(bad), "{bad}");
        }
    }

    #[test]
    fn otp_deep_link_schemes() {
        let check = |scheme: &str| {
            let mut problems = Problems::default();
            let raw = schema::Otp {
                deep_link_scheme: scheme.into(),
            };
            let compiled = otp(&raw, &mut problems);
            (compiled.deep_link_scheme, problems.0)
        };
        assert_eq!(check("stepgate"), ("stepgate".to_owned(), Vec::new()));
        assert_eq!(check(" Bank-App.v2 ").0, "bank-app.v2");
        assert!(check(" Bank-App.v2 ").1.is_empty());
        for bad in [
            "",
            "2fa",
            "bank app",
            "bank:",
            "https",
            "JavaScript",
            "data",
        ] {
            let (_, problems) = check(bad);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].path, "otp.deep_link_scheme");
        }
    }
}
