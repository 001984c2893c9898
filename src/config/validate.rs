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
    ApiClient, ApiScope, CallbackEndpoint, CallbackSettings, Features, ListenAddrs, LogFormat,
    LogSettings, RedisSettings, ServerSettings, Settings, StoreBackend, StoreSettings,
};
use crate::domain::auth_type::{
    AuthType, AuthTypeError, AuthTypes, CODE_PLACEHOLDER, FALLBACK_LANGUAGE, Method,
};
use crate::domain::code::SecretKey;

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
    let listen = listen(&file.listen, &mut problems);
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
    let api_clients = api_clients(&file.api_clients, &mut problems);
    let auth_types = auth_types(&file.auth_types, max_message_length, &mut problems);
    let callbacks = callbacks(&file.callbacks, &mut problems);

    match (
        listen, public_url, secret_key, server, log, store, auth_types,
    ) {
        (
            Some(listen),
            Some(public_url),
            Some(secret_key),
            Some(server),
            Some(log),
            Some(store),
            Some(auth_types),
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
            api_clients,
            auth_types,
            callbacks,
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

fn listen(listen: &schema::Listen, problems: &mut Problems) -> Option<ListenAddrs> {
    let proxy = socket_addr("listen.proxy", &listen.proxy, problems);
    let api = socket_addr("listen.api", &listen.api, problems);
    let metrics = socket_addr("listen.metrics", &listen.metrics, problems);
    let (proxy, api, metrics) = (proxy?, api?, metrics?);
    let named = [
        ("listen.proxy", proxy),
        ("listen.api", api),
        ("listen.metrics", metrics),
    ];
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
    for (field, value) in [
        ("connect_timeout_ms", redis.connect_timeout_ms),
        ("response_timeout_ms", redis.response_timeout_ms),
    ] {
        if !(1..=60_000).contains(&value) {
            redis_ok = false;
            problems.add(
                format!("store.redis.{field}"),
                format!("{value} is out of range (expected 1 to 60000)"),
            );
        }
    }
    let backend = match store.backend.as_str() {
        "memory" => Some(StoreBackend::Memory),
        "redis" if redis_ok => Some(StoreBackend::Redis(RedisSettings {
            url: redis.url.clone(),
            key_prefix: redis.key_prefix.clone(),
            connect_timeout: Duration::from_millis(redis.connect_timeout_ms),
            response_timeout: Duration::from_millis(redis.response_timeout_ms),
        })),
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
            let parsed = IpNet::from_str(network)
                .or_else(|_| std::net::IpAddr::from_str(network).map(IpNet::from));
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
    })
}

fn callbacks(callbacks: &schema::Callbacks, problems: &mut Problems) -> CallbackSettings {
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
    if callbacks.only_allow_configured && callbacks.endpoints.is_empty() {
        problems.add("callbacks.only_allow_configured", "no endpoints are configured, so every push and otp init would be refused (expected endpoints, or false)");
    }
    CallbackSettings {
        only_allow_configured: callbacks.only_allow_configured,
        endpoints,
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
}
