//! The checked, compiled configuration the rest of the gateway uses: parsed addresses, URLs,
//! durations and a validated set of auth types. Nothing on a request path reads YAML.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use crate::domain::application::Applications;
use crate::domain::auth_type::AuthTypes;
use crate::domain::code::SecretKey;
use crate::domain::device::PushEnrollmentMode;
use crate::domain::policy::PolicySet;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The file these settings came from.
    pub source: PathBuf,
    pub listen: ListenAddrs,
    pub public_url: Url,
    pub secret_key: SecretKey,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub store: StoreSettings,
    pub features: Features,
    pub max_message_length: usize,
    /// `api.minimum_version`: mobile authentication API paths of older versions answer 4001.
    pub minimum_api_version: u8,
    pub api_clients: Vec<ApiClient>,
    pub auth_types: AuthTypes,
    pub callbacks: CallbackSettings,
    pub rate_limits: RateLimits,
    /// `account_guard`: the consecutive-failure lock, push cap and report block.
    pub account_guard: crate::domain::guard::GuardRules,
    /// `sms_guard`: where SMS may go.
    pub sms_destinations: crate::domain::destination::DestinationRules,
    /// `api.trusted_proxies`: whose `X-Forwarded-For` the API believes.
    pub api_trusted_proxies: Vec<ipnet::IpNet>,
    pub sms: SmsSettings,
    /// Inline policies first, then those of `proxy.policy_files`.
    pub policies: PolicySet,
    pub proxy: ProxySettings,
    /// `push_configs`, keys loaded and checked.
    pub push_configs: Vec<PushConfigSettings>,
    /// `None` when `outgoing_proxy.enabled` is off.
    pub outgoing_proxy: Option<OutgoingProxySettings>,
    pub applications: Applications,
    pub enrollment: EnrollmentSettings,
    pub geolocation: GeolocationSettings,
    pub otp: OtpSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentSettings {
    pub enabled: bool,
    pub code_ttl: Duration,
    pub unique_keys_per_enrollment: bool,
    pub push_enrollment_enabled: bool,
    pub push_authorization_enabled: bool,
    pub mode: PushEnrollmentMode,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `None`: no proxy listener (API-only deployment).
    pub upstream: Option<UpstreamSettings>,
    pub max_held_body_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// `None` only when no policy demands step-up.
    pub identity: Option<IdentitySettings>,
    pub login_url: Option<Url>,
    /// `None`: reload only on SIGHUP.
    pub reload_interval: Option<Duration>,
    /// `proxy.assertion`: how forwarded step-ups are asserted to the app; `None`: not at all.
    pub assertion: Option<crate::domain::assertion::AssertionSigner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// As configured, for logs.
    pub address: String,
    /// Resolved when the config was loaded.
    pub addr: SocketAddr,
    pub tls: bool,
    pub sni: String,
    pub router: crate::domain::canonical::RouterModel,
}

#[derive(Debug, Clone)]
pub enum IdentitySettings {
    /// Headers set by a trusted layer in front; lower-case names.
    Header {
        user: String,
        phone: Option<String>,
        /// `allow_untrusted_headers`: believed from any peer (demos only).
        from_any_peer: bool,
    },
    Jwt(Box<JwtSettings>),
    Introspection(Box<IntrospectionSettings>),
}

/// Verification keys by `kid` (`None`: a key without an id).
pub type KeysById = Vec<(Option<String>, jsonwebtoken::DecodingKey)>;

#[derive(Clone)]
pub struct JwtSettings {
    pub cookie: Option<String>,
    /// Keys by `kid` (`None`: the key for tokens without a `kid`, or the only key): the secret,
    /// the PEM key or the JWKS file. Empty with `jwks_url`.
    pub keys: KeysById,
    /// Keys fetched from a JWKS endpoint instead.
    pub jwks_url: Option<JwksUrlSettings>,
    /// `algorithms` holds exactly the configured one; `iss`/`aud` required when configured.
    pub validation: jsonwebtoken::Validation,
    pub user_claim: String,
    pub phone_claim: Option<String>,
}

impl fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSettings")
            .field("cookie", &self.cookie)
            .field("keys", &self.keys.len())
            .field("jwks_url", &self.jwks_url)
            .field("algorithms", &self.validation.algorithms)
            .field("user_claim", &self.user_claim)
            .field("phone_claim", &self.phone_claim)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct JwksUrlSettings {
    pub url: Url,
    /// Age after which the cached key set is fetched again.
    pub refresh: Duration,
    /// Least time between fetches caused by unknown `kid`s, and between retries after a failure.
    pub min_refetch: Duration,
    pub timeout: Duration,
}

impl fmt::Debug for JwksUrlSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksUrlSettings")
            .field("url", &redact_url_password(self.url.as_str()))
            .field("refresh", &self.refresh)
            .field("min_refetch", &self.min_refetch)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Clone)]
pub struct IntrospectionSettings {
    pub url: Url,
    pub method: http::Method,
    /// The session cookie names forwarded (and only those).
    pub cookies: Vec<String>,
    /// The user id's path in the JSON answer, split at dots.
    pub user_field: Vec<String>,
    pub phone_field: Option<Vec<String>>,
    /// Zero: answers are not cached.
    pub cache_ttl: Duration,
    pub cache_entries: usize,
    pub timeout: Duration,
}

impl fmt::Debug for IntrospectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionSettings")
            .field("url", &redact_url_password(self.url.as_str()))
            .field("method", &self.method)
            .field("cookies", &self.cookies)
            .field("user_field", &self.user_field.join("."))
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_entries", &self.cache_entries)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pub use crate::domain::regulation::WindowLimit as Limit;

/// `None` means the limit is switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    pub sms_per_user: Option<Limit>,
    pub sms_per_phone: Option<Limit>,
    pub sms_global: Option<Limit>,
    pub sms_per_country: Option<Limit>,
    pub sms_per_client_ip: Option<Limit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    pub proxy: SocketAddr,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    /// Bound only when an API client has the `admin` scope.
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    Redis(RedisSettings),
}

#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Standalone mode's server (unused by the other modes).
    pub url: String,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub mode: RedisMode,
    pub durability: RedisDurability,
}

/// How many replicas must hold a deciding write before it counts (`WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisDurability {
    /// 0: answer as soon as the primary has it.
    pub replicas: u32,
    pub timeout: Duration,
}

impl Default for RedisDurability {
    fn default() -> Self {
        Self {
            replicas: 0,
            timeout: Duration::from_millis(500),
        }
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url_password(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("mode", &self.mode)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// How the gateway finds its Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server at `RedisSettings::url`.
    Standalone,
    /// The primary the Sentinels name, found again after every failover.
    Sentinel(Box<SentinelSettings>),
    /// Redis Cluster: keys sharded by hash slot; the client follows MOVED/ASK and failovers.
    Cluster(ClusterSettings),
}

impl RedisMode {
    pub fn name(&self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Sentinel(_) => "sentinel",
            RedisMode::Cluster(_) => "cluster",
        }
    }
}

/// One `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNode {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for RedisNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How to sign in to a set of Redis nodes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: bool,
}

impl fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    pub master_name: String,
    pub sentinels: Vec<RedisNode>,
    /// The Sentinels' own sign-in.
    pub sentinel_auth: RedisAuth,
    /// The primary's (and replicas') sign-in.
    pub data_auth: RedisAuth,
    pub db: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub nodes: Vec<RedisNode>,
    pub data_auth: RedisAuth,
}

/// A URL fit for logs: any password replaced by `***`.
pub fn redact_url_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            mask_password(&mut parsed);
            parsed.to_string()
        }
        Err(_) => "<unparsable url>".to_owned(),
    }
}

fn mask_password(url: &mut Url) {
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub retention: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub mobile_authentication: bool,
    pub geolocation: bool,
}

/// An API a client may be allowed to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiScope {
    MobileAuthentication,
    EndUser,
    Admin,
}

impl ApiScope {
    pub const ALL: [ApiScope; 3] = [
        ApiScope::MobileAuthentication,
        ApiScope::EndUser,
        ApiScope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiScope::MobileAuthentication => "mobile_authentication",
            ApiScope::EndUser => "end_user",
            ApiScope::Admin => "admin",
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    pub client_id: String,
    pub client_secret: String,
    pub apis: Vec<ApiScope>,
    pub allowed_networks: Vec<IpNet>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("client_id", &self.client_id)
            .field("apis", &self.apis)
            .field("allowed_networks", &self.allowed_networks)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub only_allow_configured: bool,
    pub endpoints: Vec<CallbackEndpoint>,
    /// Internal networks a callback may reach although it is not a configured endpoint
    /// (`domain::callback::is_internal` refuses the rest).
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Delivery attempts per callback, the first included (at least 1).
    pub max_attempts: u32,
    /// Limit on one whole callback request (connect, send, answer).
    pub timeout: Duration,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            only_allow_configured: true,
            endpoints: Vec::new(),
            allowed_networks: Vec::new(),
            max_attempts: 10,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub struct CallbackEndpoint {
    pub url: Url,
    pub basic_auth: Option<(String, String)>,
}

impl fmt::Debug for CallbackEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackEndpoint")
            .field("url", &self.url.as_str())
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(user, _)| user),
            )
            .finish()
    }
}

/// How SMS codes leave the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsSettings {
    pub gateway: SmsGateway,
    /// Limit on one whole outgoing request (connect, send, answer).
    pub timeout: Duration,
    /// When set, every SMS ends with the origin-bound one-time-code line `@host #code`.
    pub origin_bound_host: Option<String>,
}

impl Default for SmsSettings {
    fn default() -> Self {
        Self {
            gateway: SmsGateway::File(FileGatewaySettings {
                path: PathBuf::from("sms-outbox.jsonl"),
            }),
            timeout: Duration::from_secs(5),
            origin_bound_host: None,
        }
    }
}

/// The selected SMS gateway with its (complete, checked) settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsGateway {
    Twilio(TwilioSettings),
    Http(HttpGatewaySettings),
    File(FileGatewaySettings),
    /// Prints each SMS (code included) to standard output: demos only.
    Console,
}

impl SmsGateway {
    /// The name used in config, logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            SmsGateway::Twilio(_) => "twilio",
            SmsGateway::Http(_) => "http",
            SmsGateway::File(_) => "file",
            SmsGateway::Console => "console",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub auth_token: String,
    /// The default sender (`+E.164`).
    pub from_number: String,
    /// API paths are appended to it; a trailing slash is ignored.
    pub base_url: Url,
}

impl fmt::Debug for TwilioSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioSettings")
            .field("account_sid", &self.account_sid)
            .field("from_number", &self.from_number)
            .field("base_url", &url_for_logs(&self.base_url))
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct HttpGatewaySettings {
    pub url: Url,
    pub format: HttpBodyFormat,
    pub auth: Option<HttpAuth>,
    /// Extra request headers (names and values already checked to be valid HTTP).
    pub headers: Vec<(String, String)>,
    /// The request body's fields, in name order.
    pub body: Vec<(String, BodyTemplate)>,
}

impl fmt::Debug for HttpGatewaySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpGatewaySettings")
            .field("url", &url_for_logs(&self.url))
            .field("format", &self.format)
            .field("auth", &self.auth)
            .field("headers", &header_names)
            .field("body", &self.body)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpBodyFormat {
    Json,
    Form,
}

#[derive(Clone, PartialEq, Eq)]
pub enum HttpAuth {
    Basic { username: String, password: String },
    Bearer(String),
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            HttpAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// One piece of a body field template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Text(String),
    To,
    From,
    Body,
}

/// A body field of the generic HTTP gateway: text with `{to}`, `{from}` and `{body}`
/// placeholders, parsed once so that rendering is a single pass (a message that happens to
/// contain `{to}` is never expanded again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTemplate(Vec<TemplatePart>);

impl BodyTemplate {
    pub const PLACEHOLDERS: [&'static str; 3] = ["{to}", "{from}", "{body}"];

    /// Parses a template; the error names the offending text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_owned()));
            }
            let after = &rest[open..];
            let Some(close) = after.find('}') else {
                return Err(format!("unclosed '{{' in '{text}'"));
            };
            parts.push(match &after[..=close] {
                "{to}" => TemplatePart::To,
                "{from}" => TemplatePart::From,
                "{body}" => TemplatePart::Body,
                other => return Err(format!("unknown placeholder '{other}'")),
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        Ok(Self(parts))
    }

    pub fn parts(&self) -> &[TemplatePart] {
        &self.0
    }

    /// True when the template is exactly `{from}`: such a field is left out when there is no
    /// sender, so the provider applies its own default.
    pub fn is_only_from(&self) -> bool {
        self.0 == [TemplatePart::From]
    }

    pub fn uses(&self, placeholder: &TemplatePart) -> bool {
        self.0.contains(placeholder)
    }

    /// The text with every placeholder replaced (`from` empty when there is no sender).
    pub fn render(&self, to: &str, from: Option<&str>, body: &str) -> String {
        let mut out = String::new();
        for part in &self.0 {
            out.push_str(match part {
                TemplatePart::Text(text) => text,
                TemplatePart::To => to,
                TemplatePart::From => from.unwrap_or_default(),
                TemplatePart::Body => body,
            });
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGatewaySettings {
    pub path: PathBuf,
}

/// A URL fit for logs: password and query (which may carry API keys) replaced by `***`.
pub fn url_for_logs(url: &Url) -> String {
    let mut shown = url.clone();
    mask_password(&mut shown);
    if shown.query().is_some() {
        shown.set_query(Some("***"));
    }
    shown.to_string()
}

/// One `push_configs[]` entry, its key read and proven usable when the config loaded.
#[derive(Debug, Clone)]
pub struct PushConfigSettings {
    pub id: String,
    pub provider: PushProviderSettings,
    /// Extra trusted root certificates (PEM, checked at load) for private endpoints and tests.
    pub ca_pem: Option<Vec<u8>>,
}

impl PushConfigSettings {
    pub fn platform(&self) -> crate::domain::device::Platform {
        match self.provider {
            PushProviderSettings::Apns(_) => crate::domain::device::Platform::Ios,
            PushProviderSettings::FcmV1(_) | PushProviderSettings::FcmLegacy(_) => {
                crate::domain::device::Platform::Android
            }
            PushProviderSettings::Console(platform) => platform,
        }
    }
}

#[derive(Debug, Clone)]
pub enum PushProviderSettings {
    Apns(ApnsSettings),
    FcmV1(FcmV1Settings),
    FcmLegacy(FcmLegacySettings),
    /// `provider: console`: printed on standard output, for the platform's devices.
    Console(crate::domain::device::Platform),
}

/// APNs token auth: ES256 JWTs signed with the team's .p8 key.
#[derive(Clone)]
pub struct ApnsSettings {
    pub team_id: String,
    pub key_id: String,
    /// For messages only; the key itself is `key`.
    pub key_file: PathBuf,
    pub key: jsonwebtoken::EncodingKey,
    /// `None`: Apple's production or sandbox host by the app version's environment.
    pub endpoint: Option<Url>,
}

impl fmt::Debug for ApnsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsSettings")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("key_file", &self.key_file)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

/// FCM HTTP v1 with a service account: OAuth2 JWT-bearer grant, then `messages:send`.
#[derive(Clone)]
pub struct FcmV1Settings {
    pub project_id: String,
    pub client_email: String,
    /// The key's id, sent as the assertion's `kid` when the file has one.
    pub private_key_id: Option<String>,
    pub key: jsonwebtoken::EncodingKey,
    pub service_account_file: PathBuf,
    /// The config's `token_uri`, else the service account's.
    pub token_uri: Url,
    /// Base URL of the send API (`https://fcm.googleapis.com`).
    pub endpoint: Url,
}

impl fmt::Debug for FcmV1Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmV1Settings")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("service_account_file", &self.service_account_file)
            .field("token_uri", &self.token_uri.as_str())
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// The legacy FCM API with a server key (`Authorization: key=...`).
#[derive(Clone)]
pub struct FcmLegacySettings {
    pub server_key: String,
    /// The full send URL (`https://fcm.googleapis.com/fcm/send`).
    pub endpoint: Url,
}

impl fmt::Debug for FcmLegacySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmLegacySettings")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// The HTTP proxy every outgoing provider call (push, SMS) goes through, when enabled.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingProxySettings {
    /// `http://` or `https://` proxy URL, without credentials.
    pub url: Url,
    /// Basic credentials for `Proxy-Authorization`.
    pub credentials: Option<(String, String)>,
    /// Send the credentials with the first request. The HTTP client cannot answer a 407
    /// challenge, so configured credentials are always sent up front; `false` is accepted for
    /// compatibility and logged.
    pub preemptive_auth: bool,
}

impl fmt::Debug for OutgoingProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingProxySettings")
            .field("url", &url_for_logs(&self.url))
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("preemptive_auth", &self.preemptive_auth)
            .finish()
    }
}

/// `geolocation`, compiled: the database opened once at load, the templates parsed.
#[derive(Debug, Clone, Default)]
pub struct GeolocationSettings {
    /// `None` when `features.geolocation` is off.
    pub database: Option<GeoDatabase>,
    /// Per lower-case language code; empty: the reference's default template for every language.
    pub templates: std::collections::BTreeMap<String, crate::domain::context::MessageTemplate>,
}

/// OTP (QR) authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpSettings {
    /// Lower case, checked to be a URL scheme that is no web or script scheme.
    pub deep_link_scheme: String,
}

/// An opened MaxMind-format database whose type was checked to hold countries (and cities).
#[derive(Clone)]
pub struct GeoDatabase {
    pub path: PathBuf,
    pub reader: std::sync::Arc<maxminddb::Reader<Vec<u8>>>,
}

impl fmt::Debug for GeoDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let metadata = self.reader.metadata();
        f.debug_struct("GeoDatabase")
            .field("path", &self.path)
            .field("database_type", &metadata.database_type)
            .field("build_epoch", &metadata.build_epoch)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        assert_eq!(
            redact_url_password("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        let settings = RedisSettings {
            url: "redis://user:hunter2@cache:6379/0".into(),
            key_prefix: "p:".into(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            mode: RedisMode::Sentinel(Box::new(SentinelSettings {
                master_name: "m".into(),
                sentinels: Vec::new(),
                sentinel_auth: RedisAuth {
                    password: Some("sentinel-hunter2".into()),
                    ..RedisAuth::default()
                },
                data_auth: RedisAuth {
                    password: Some("data-hunter2".into()),
                    ..RedisAuth::default()
                },
                db: 0,
            })),
            durability: RedisDurability::default(),
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn body_templates_are_parsed_once_and_rendered_in_one_pass() {
        let template = BodyTemplate::parse("To {to} from {from}: {body}!").unwrap();
        assert_eq!(
            template.render("+31612345678", None, "code {to}"),
            "To +31612345678 from : code {to}!"
        );
        assert!(BodyTemplate::parse("{from}").unwrap().is_only_from());
        assert!(!BodyTemplate::parse(" {from}").unwrap().is_only_from());
        assert_eq!(
            BodyTemplate::parse("{code}").unwrap_err(),
            "unknown placeholder '{code}'"
        );
        assert!(BodyTemplate::parse("oops {to").is_err());
        assert_eq!(BodyTemplate::parse("").unwrap().parts(), []);
    }

    #[test]
    fn sms_secrets_never_reach_debug_output() {
        let twilio = TwilioSettings {
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            auth_token: "twilio-secret".into(),
            from_number: "+15005550006".into(),
            base_url: Url::parse("https://api.twilio.com").unwrap(),
        };
        let http = HttpGatewaySettings {
            url: Url::parse("https://u:url-secret@sms.example/send?key=query-secret").unwrap(),
            format: HttpBodyFormat::Json,
            auth: Some(HttpAuth::Bearer("bearer-secret".into())),
            headers: vec![("X-Key".into(), "header-secret".into())],
            body: Vec::new(),
        };
        let shown = format!("{twilio:?} {http:?}");
        for secret in [
            "twilio-secret",
            "url-secret",
            "query-secret",
            "bearer-secret",
            "header-secret",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("X-Key"), "{shown}");
    }
}
