//! The serde mirror of `config.yaml`: what an operator may write, with defaults beside each
//! struct. Values stay close to the YAML (strings, numbers); `validate` checks them all and
//! compiles them into `Settings`. Unknown keys are collected (not silently ignored) by the loader,
//! which reports each one with its line.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    /// Listen addresses of the three listeners.
    pub listen: Listen,
    /// The externally visible base URL of the API listener (links, QR codes). Defaults to
    /// `http://` + `listen.api`.
    pub public_url: Option<String>,
    /// At least 32 bytes; used for code hashing and grants. Prefer `STEPGATE_SECRET_KEY`.
    pub secret_key: Option<String>,
    /// Process settings: threads and shutdown timing.
    pub server: Server,
    /// Log level and format.
    pub log: Log,
    /// Where transactions and counters live.
    pub store: Store,
    /// Feature switches (system level).
    pub features: Features,
    /// Limits of the portal-facing API.
    pub api: Api,
    /// Portals and tools allowed to call the API.
    pub api_clients: Vec<ApiClient>,
    /// The named mobile authentication types.
    pub auth_types: Vec<AuthType>,
    /// Portal callback endpoints: whitelist and Basic credentials.
    pub callbacks: Callbacks,
    /// Limits on cost and abuse (SMS pumping), counted atomically in the store.
    pub rate_limits: RateLimits,
    /// Account-wide limits across transactions and methods: the consecutive-failure lock, the
    /// push cap, and the "this wasn't me" block.
    pub account_guard: AccountGuard,
    /// Where SMS may go: the SMS-pumping guard's allow- and deny-lists of E.164 prefixes.
    pub sms_guard: SmsGuard,
    /// The gateway that delivers SMS codes.
    pub sms: Sms,
    /// The sidecar proxy: default decision and where more policy files are.
    pub proxy: Proxy,
    /// Route policies, checked in order before those of `proxy.policy_files`.
    pub policies: Vec<PolicyEntry>,
    /// Push provider accounts (APNs, FCM) that application versions refer to.
    pub push_configs: Vec<PushConfig>,
    /// HTTP proxy for outgoing provider calls (push and SMS).
    pub outgoing_proxy: OutgoingProxy,
    /// The phone apps devices enroll with.
    pub applications: Vec<Application>,
    /// Key and push enrollment rules.
    pub enrollment: Enrollment,
    /// The secure-message context (`features.geolocation`): GeoIP database and templates.
    pub geolocation: Geolocation,
    /// OTP (QR) authentication: how the code is handed to the phone app.
    pub otp: Otp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Listen {
    /// The reverse proxy (sidecar) listener, `host:port`.
    pub proxy: String,
    /// The REST API listener (mobile authentication API, health), `host:port`.
    pub api: String,
    /// The Prometheus `/metrics` listener, `host:port`.
    pub metrics: String,
    /// The admin API listener, `host:port`; keep it on loopback or an ops network. It serves
    /// only when an API client has `apis: [admin]`.
    pub admin: String,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            proxy: "127.0.0.1:8080".into(),
            api: "127.0.0.1:8081".into(),
            metrics: "127.0.0.1:9100".into(),
            admin: "127.0.0.1:8082".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Server {
    /// Worker threads per listener. 1 measured fastest on a 2-core machine shared with the load.
    pub threads: u32,
    /// After SIGTERM, how long listeners keep serving in-flight work before stopping.
    pub grace_period_seconds: u64,
    /// After the grace period, how long runtimes get to wind down before the process exits.
    pub graceful_shutdown_timeout_seconds: u64,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            threads: 1,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug`, `trace` or `off`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Store {
    /// `memory` (embedded, single instance, lost on restart) or `redis`.
    pub backend: String,
    /// Redis connection, used when `backend: redis`.
    pub redis: Redis,
    /// How long a finished or expired transaction stays readable (for result fetches).
    pub retention_seconds: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            backend: "memory".into(),
            redis: Redis::default(),
            retention_seconds: 3600,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Redis {
    /// `standalone` (one server: `url`), `sentinel` (a primary found through Sentinel, followed
    /// across failovers) or `cluster` (Redis Cluster, sharded).
    pub mode: String,
    /// Standalone: `redis://[user:password@]host:port/db` or `rediss://` for TLS.
    /// `STEPGATE_REDIS_URL` overrides.
    pub url: String,
    /// Sentinel and cluster: the data nodes' ACL user (standalone: in `url`).
    pub username: Option<String>,
    /// Sentinel and cluster: the data nodes' password. Prefer `STEPGATE_REDIS_PASSWORD`.
    pub password: Option<String>,
    /// Sentinel and cluster: TLS to the data nodes.
    pub tls: bool,
    /// Sentinel: the database number (a cluster has only 0).
    pub db: i64,
    pub sentinel: RedisSentinel,
    pub cluster: RedisCluster,
    /// After each write that decides something (a transaction stored, an attempt counted, an
    /// approval, a held request taken), wait until this many replicas have it (`WAIT`); fewer
    /// within `replica_ack_timeout_ms` fails the call (fail closed). 0: do not wait.
    pub replicas_to_acknowledge: u32,
    pub replica_ack_timeout_ms: u64,
    /// Prepended to every key, so several gateways can share one Redis.
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    /// Per-command timeout; a slower answer fails closed.
    pub response_timeout_ms: u64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("mode", &self.mode)
            .field("key_prefix", &self.key_prefix)
            .field("sentinel", &self.sentinel)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// `store.redis.sentinel`: where the Sentinels are and what they call the primary.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct RedisSentinel {
    /// The name the Sentinels monitor the primary under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// The Sentinels, `host:port` each (three or more in production).
    pub nodes: Vec<String>,
    /// The Sentinels' own ACL user, when they require one.
    pub username: Option<String>,
    /// The Sentinels' own password (`requirepass` on the Sentinels). Prefer
    /// `STEPGATE_REDIS_SENTINEL_PASSWORD`.
    pub password: Option<String>,
    /// TLS to the Sentinels.
    pub tls: bool,
}

impl std::fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSentinel")
            .field("master_name", &self.master_name)
            .field("nodes", &self.nodes)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// `store.redis.cluster`: the seed nodes the client learns the cluster's layout from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RedisCluster {
    /// Some of the cluster's nodes, `host:port` each.
    pub nodes: Vec<String>,
}

impl Default for Redis {
    fn default() -> Self {
        Self {
            mode: "standalone".into(),
            username: None,
            password: None,
            tls: false,
            db: 0,
            sentinel: RedisSentinel::default(),
            cluster: RedisCluster::default(),
            replicas_to_acknowledge: 0,
            replica_ack_timeout_ms: 500,
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "stepgate:".into(),
            connect_timeout_ms: 1000,
            response_timeout_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Features {
    /// The whole mobile authentication API; off answers error 1000.
    pub mobile_authentication: bool,
    /// Location context in the secure message.
    pub geolocation: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            mobile_authentication: true,
            geolocation: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Api {
    /// Longest accepted `message`, in characters (the reference's default is 155).
    pub max_message_length: u32,
    /// The lowest mobile authentication API version served (2 to 4); paths of older versions
    /// answer error 4001.
    pub minimum_version: u8,
    /// Reverse proxies in front of the API listener whose `X-Forwarded-For` is believed (CIDRs):
    /// the per-client-IP SMS quota counts the address they forward. Empty: the API's callers are
    /// portals, and no per-client-IP quota applies to the API.
    pub trusted_proxies: Vec<String>,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            max_message_length: 155,
            minimum_version: 3,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ApiClient {
    pub client_id: String,
    /// Prefer `STEPGATE_API_CLIENT_SECRET_<CLIENT_ID>` (upper case, other characters as `_`).
    pub client_secret: Option<String>,
    /// Which APIs the client may call: `mobile_authentication`, `end_user`, `admin`.
    pub apis: Vec<String>,
    /// CIDRs the client may call from; empty allows any address.
    pub allowed_networks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AuthType {
    /// Unique name, passed as `type` in the API.
    pub name: String,
    /// `push`, `push_with_pin`, `push_with_fingerprint`, `push_with_custom_authenticator`, `otp`, `sms`.
    pub method: String,
    /// Lifetime of a transaction; every attempt must happen within it.
    pub ttl_seconds: Option<u64>,
    /// Wrong codes before the transaction is invalidated (sms); 0 = unlimited until expiry.
    pub max_attempts: Option<u32>,
    /// Resends per transaction; 0 disables resend.
    pub max_resends: Option<u32>,
    /// SMS sender: alphanumeric id (up to 11 characters), short code or phone number.
    pub sender_id: Option<String>,
    /// Type to use when this one cannot be started (not allowed for otp).
    pub fallback: Option<String>,
    /// Messages per lower-case language code; `en` is the fallback language.
    pub default_messages: BTreeMap<String, String>,
    /// Whether `signing_data` is signed by the device (push types).
    pub transaction_signing: bool,
    /// Accepts an SMS default message without `{code}`; such an SMS then holds only the code.
    pub allow_message_without_code: bool,
    /// Push types: show a two-digit number to the requester that the user must type
    /// (`type`, or `true`) or pick among three (`pick`) on the phone; a wrong number fails.
    pub number_matching: NumberMatchingSetting,
}

/// `number_matching` as written: `false`/`true` or `off`/`pick`/`type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NumberMatchingSetting {
    Flag(bool),
    Mode(String),
}

impl Default for NumberMatchingSetting {
    fn default() -> Self {
        NumberMatchingSetting::Flag(false)
    }
}

impl AuthType {
    pub const DEFAULT_TTL_SECONDS: u64 = 300;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    pub const DEFAULT_MAX_RESENDS: u32 = 0;
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Callbacks {
    /// When on (the default), init only accepts a `callback_uri` that exactly matches an
    /// endpoint below.
    pub only_allow_configured: bool,
    pub endpoints: Vec<CallbackEndpoint>,
    /// With `only_allow_configured: false`: internal networks (loopback, private, link-local...)
    /// that callbacks may still reach; none by default.
    pub allowed_networks: Vec<String>,
    /// Delivery attempts per callback (the first included) before it is given up; retries
    /// back off exponentially from 1 s up to 5 minutes.
    pub max_attempts: u32,
    /// Limit on one whole callback request (connect, send, answer), in milliseconds.
    pub timeout_ms: u64,
}

impl Callbacks {
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
}

impl Default for Callbacks {
    fn default() -> Self {
        Self {
            only_allow_configured: true,
            endpoints: Vec::new(),
            allowed_networks: Vec::new(),
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CallbackEndpoint {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    /// SMS sent (init and resend) per user id.
    pub sms_per_user: RateLimit,
    /// SMS sent (init and resend) per phone number.
    pub sms_per_phone: RateLimit,
    /// SMS sent by the whole gateway (every instance), per window.
    pub sms_global: RateLimit,
    /// SMS sent per destination country calling code (`+31`, `+1`, `+358`).
    pub sms_per_country: RateLimit,
    /// SMS sent per client address: the proxy's client (behind `proxy.trusted_proxies`), and an
    /// API caller's forwarded address behind `api.trusted_proxies`.
    pub sms_per_client_ip: RateLimit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            sms_per_user: RateLimit {
                limit: 5,
                window_seconds: 900,
            },
            sms_per_phone: RateLimit {
                limit: 5,
                window_seconds: 900,
            },
            sms_global: RateLimit {
                limit: 0,
                window_seconds: 60,
            },
            sms_per_country: RateLimit {
                limit: 0,
                window_seconds: 3600,
            },
            sms_per_client_ip: RateLimit {
                limit: 20,
                window_seconds: 900,
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SmsGuard {
    /// E.164 prefixes (`+31`, `+4475`) SMS may go to; empty: every destination not denied.
    pub allowed_prefixes: Vec<String>,
    /// E.164 prefixes SMS never go to. Default: the shipped list of premium-rate and
    /// international-network ranges; set `[]` to drop it.
    pub denied_prefixes: Vec<String>,
    /// More denied prefixes, added to `denied_prefixes` (keeps the shipped list).
    pub extra_denied_prefixes: Vec<String>,
}

impl Default for SmsGuard {
    fn default() -> Self {
        Self {
            allowed_prefixes: Vec::new(),
            denied_prefixes: crate::domain::destination::DEFAULT_DENIED_PREFIXES
                .iter()
                .map(|prefix| (*prefix).to_owned())
                .collect(),
            extra_denied_prefixes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct AccountGuard {
    /// Consecutive failed authentications (wrong SMS codes, PINs, numbers), across
    /// transactions and methods, that lock the account; 0 switches the lock off.
    pub max_failures: u32,
    /// How long a lock lasts (an admin can lift it sooner).
    pub lock_seconds: u64,
    /// A failure count with no new failure for this long starts again from zero.
    pub forget_after_seconds: u64,
    /// Pushes since the last success after which further pushes wait; 0 switches it off.
    pub max_pushes: u32,
    /// The wait after the first push beyond `max_pushes`; it doubles per further push.
    pub push_backoff_seconds: u64,
    pub max_push_backoff_seconds: u64,
    /// How long a "this wasn't me" report blocks push step-ups for the user.
    pub report_block_seconds: u64,
    /// Step-ups (SMS, push) one user may have pending at once; 0 = unbounded.
    pub max_pending_step_ups: u32,
    /// Requests the proxy may hold for one user at once; 0 = unbounded.
    pub max_held_requests: u32,
}

impl Default for AccountGuard {
    fn default() -> Self {
        let rules = crate::domain::guard::GuardRules::default();
        Self {
            max_failures: rules.max_failures,
            lock_seconds: rules.lock_for.as_secs(),
            forget_after_seconds: rules.forget_after.as_secs(),
            max_pushes: rules.max_pushes,
            push_backoff_seconds: rules.push_backoff.as_secs(),
            max_push_backoff_seconds: rules.max_push_backoff.as_secs(),
            report_block_seconds: rules.report_block.as_secs(),
            max_pending_step_ups: rules.max_pending_step_ups,
            max_held_requests: rules.max_held_requests,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    /// Hits allowed per window; 0 switches the limit off.
    pub limit: u32,
    pub window_seconds: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            limit: 5,
            window_seconds: 900,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Sms {
    /// `twilio`, `http`, `file` or `console`. `file` (the default) sends nothing: it appends each
    /// message to a local file, for trying stepgate offline. `console` prints each message, code
    /// included, to standard output (demos only).
    pub gateway: String,
    /// Limit on one whole outgoing request (connect, send, answer), in milliseconds.
    pub timeout_ms: u64,
    /// Host name of the site where users type the code (e.g. `bank.example`). When set, every SMS
    /// ends with the origin-bound one-time-code line `@host #code`, so browsers offer the code on
    /// that site only.
    pub origin_bound_host: Option<String>,
    /// Used when `gateway: file`.
    pub file: SmsFile,
    /// Used when `gateway: twilio`.
    pub twilio: Twilio,
    /// Used when `gateway: http`.
    pub http: SmsHttp,
}

impl Default for Sms {
    fn default() -> Self {
        Self {
            gateway: "file".into(),
            timeout_ms: 5000,
            origin_bound_host: None,
            file: SmsFile::default(),
            twilio: Twilio::default(),
            http: SmsHttp::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SmsFile {
    /// File that receives one JSON line per message (codes included, so it is created readable by
    /// its owner only). Relative paths start at the working directory; the folder must exist.
    pub path: String,
}

impl Default for SmsFile {
    fn default() -> Self {
        Self {
            path: "sms-outbox.jsonl".into(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Twilio {
    /// The account SID: `AC` followed by 32 hexadecimal characters.
    pub account_sid: String,
    /// The account's auth token. Prefer `STEPGATE_TWILIO_AUTH_TOKEN`.
    pub auth_token: Option<String>,
    /// Default sender, a `+E.164` Twilio number; also the retry sender when a type's `sender_id`
    /// is refused.
    pub from_number: String,
    /// The API's base URL; only tests point it elsewhere.
    pub base_url: String,
}

impl Default for Twilio {
    fn default() -> Self {
        Self {
            account_sid: String::new(),
            auth_token: None,
            from_number: String::new(),
            base_url: "https://api.twilio.com".into(),
        }
    }
}

impl std::fmt::Debug for Twilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twilio")
            .field("account_sid", &self.account_sid)
            .field("from_number", &self.from_number)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct SmsHttp {
    /// The endpoint that receives a POST per message.
    pub url: String,
    /// `json` (an object) or `form` (`application/x-www-form-urlencoded`).
    pub format: String,
    /// HTTP Basic user; goes with `password`.
    pub username: Option<String>,
    /// HTTP Basic password. Prefer `STEPGATE_SMS_HTTP_PASSWORD`.
    pub password: Option<String>,
    /// Sent as `Authorization: Bearer ...` (not together with Basic). Prefer
    /// `STEPGATE_SMS_HTTP_BEARER_TOKEN`.
    pub bearer_token: Option<String>,
    /// Extra request headers, such as an API key header.
    pub headers: BTreeMap<String, String>,
    /// The fields of the request body. Values may use the placeholders `{to}`, `{from}` (the
    /// type's sender id; a field that is exactly `{from}` is left out when the type has none) and
    /// `{body}` (the text).
    pub body: BTreeMap<String, String>,
}

impl Default for SmsHttp {
    fn default() -> Self {
        Self {
            url: String::new(),
            format: "json".into(),
            username: None,
            password: None,
            bearer_token: None,
            headers: BTreeMap::new(),
            body: BTreeMap::from([
                ("to".to_owned(), "{to}".to_owned()),
                ("from".to_owned(), "{from}".to_owned()),
                ("text".to_owned(), "{body}".to_owned()),
            ]),
        }
    }
}

impl std::fmt::Debug for SmsHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsHttp")
            .field("url", &super::settings::redact_url_password(&self.url))
            .field("format", &self.format)
            .field("username", &self.username)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Proxy {
    /// What happens to a request no policy matches: `allow` or `deny`.
    pub default_action: String,
    /// Globs (relative to the config file's folder) of YAML files holding `policies:` lists,
    /// read in name order after the inline policies.
    pub policy_files: Vec<String>,
    /// The app behind the gateway. Without it the proxy listener does not start (API only).
    pub upstream: Option<Upstream>,
    /// Largest request body held for a step-up; larger requests on protected routes get 413.
    pub max_held_body_bytes: u64,
    /// CIDRs of proxies in front of stepgate whose `X-Forwarded-For`/`-Proto` are believed.
    pub trusted_proxies: Vec<String>,
    /// Where the user id (and phone number) of a request come from.
    pub identity: Option<Identity>,
    /// Browsers without an identity on a protected route are redirected here (with
    /// `?return_to=`); without it they get 401.
    pub login_url: Option<String>,
    /// How often policy files are checked for changes; 0 = only on SIGHUP.
    pub reload_interval_seconds: u64,
    /// The signed step-up assertion added to requests forwarded after a step-up or with a
    /// grant (`Stepgate-Assertion`); off without it.
    pub assertion: Option<Assertion>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    /// The P-256 private key (PEM), relative to the config file.
    pub key_file: String,
    /// `iss`; the gate's `public_url` by default.
    pub issuer: Option<String>,
    /// `aud`, when the app checks one.
    pub audience: Option<String>,
    /// Lifetime of one assertion.
    #[serde(default = "Assertion::default_ttl_seconds")]
    pub ttl_seconds: u64,
}

impl Assertion {
    fn default_ttl_seconds() -> u64 {
        60
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            default_action: "allow".into(),
            policy_files: Vec::new(),
            upstream: None,
            max_held_body_bytes: 1024 * 1024,
            trusted_proxies: Vec::new(),
            identity: None,
            login_url: None,
            assertion: None,
            reload_interval_seconds: 2,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Upstream {
    /// `host:port`; a host name is resolved once, when the config is loaded.
    pub address: String,
    /// Speak TLS to the upstream (certificate verified against the system roots).
    pub tls: bool,
    /// The TLS server name; defaults to the host of `address`.
    pub sni: Option<String>,
    /// How liberal the app's router is: every spelling it may route to a protected path is
    /// protected. All on by default; turn one off only for an app known not to do it.
    pub router: Router,
}

/// The liberties the app's router may take (see README, "Threat model").
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Router {
    /// `/TRANSFER` reaches `/transfer` (Express, ASP.NET Core, IIS).
    pub case_insensitive: bool,
    /// `/transfer;jsessionid=1` reaches `/transfer` (Tomcat, Spring, Jetty).
    pub path_parameters: bool,
    /// `/transfer.json` reaches `/transfer` (Rails formats, Spring suffix patterns).
    pub format_suffix: bool,
    /// `X-HTTP-Method-Override` and friends, and `_method` in a POST, change the method.
    pub method_override: bool,
}

impl Default for Router {
    /// The domain's router model is the one place the defaults are decided.
    fn default() -> Self {
        let model = crate::domain::canonical::RouterModel::default();
        Self {
            case_insensitive: model.case_insensitive,
            path_parameters: model.path_parameters,
            format_suffix: model.format_suffix,
            method_override: model.method_override,
        }
    }
}

/// Exactly one of `header`, `jwt` or `introspection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Identity {
    /// A header set by a trusted layer in front (e.g. `X-User-Id`) carrying the user id. Read
    /// only from peers in `proxy.trusted_proxies`; other clients' copies are ignored and removed
    /// before the request goes upstream.
    pub header: Option<String>,
    /// With `header`: a header carrying the user's phone number (for SMS).
    pub phone_header: Option<String>,
    /// With `header`: believe the headers from ANY peer, trusted or not. Anyone who can reach
    /// stepgate can then name themselves: for demos on one machine only, never in production.
    /// Without it, `header` needs a non-empty `proxy.trusted_proxies`.
    pub allow_untrusted_headers: bool,
    /// A JSON Web Token from a cookie or `Authorization: Bearer`.
    pub jwt: Option<Jwt>,
    /// Ask the app's own "who am I" endpoint with the client's session cookie(s).
    pub introspection: Option<Introspection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Jwt {
    /// Read the token from this cookie; `Authorization: Bearer` is always accepted too.
    pub cookie: Option<String>,
    /// `HS256`, `RS256`, `ES256` or `EdDSA` (Ed25519). Tokens must carry exactly this `alg`.
    pub algorithm: String,
    /// HS256 secret (prefer `STEPGATE_JWT_SECRET`).
    pub secret: Option<String>,
    /// RS256/ES256/EdDSA: a PEM public key file.
    pub public_key_file: Option<String>,
    /// RS256/ES256/EdDSA: a JWKS file (keys chosen by `kid`).
    pub jwks_file: Option<String>,
    /// RS256/ES256/EdDSA: a JWKS URL, fetched on first use, refreshed every
    /// `jwks_refresh_seconds` and when a token names an unknown `kid` (at most once per
    /// `jwks_min_refetch_seconds`).
    pub jwks_url: Option<String>,
    /// With `jwks_url`: how old the cached key set may grow before it is fetched again.
    pub jwks_refresh_seconds: u64,
    /// With `jwks_url`: the least time between two fetches caused by unknown `kid`s (and
    /// between retries after a failed fetch), so forged `kid`s cannot make us hammer the
    /// endpoint.
    pub jwks_min_refetch_seconds: u64,
    /// With `jwks_url`: timeout of one fetch.
    pub jwks_timeout_ms: u64,
    /// Required `iss`, when set (tokens without `iss` are refused).
    pub issuer: Option<String>,
    /// Required `aud`, when set (tokens without `aud` are refused).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// The claim holding the user id.
    pub user_claim: String,
    /// The claim holding the phone number (for SMS); a token without it has no phone.
    pub phone_claim: Option<String>,
}

impl Default for Jwt {
    fn default() -> Self {
        Self {
            cookie: None,
            algorithm: String::new(),
            secret: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_seconds: 300,
            jwks_min_refetch_seconds: 30,
            jwks_timeout_ms: 2000,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
            user_claim: "sub".into(),
            phone_claim: Some("phone_number".into()),
        }
    }
}

/// The app's own "who am I" endpoint, for sites whose session cookie is opaque.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Introspection {
    /// The endpoint, e.g. `http://127.0.0.1:3000/api/me`.
    pub url: String,
    /// `GET` or `POST` (without a body).
    pub method: String,
    /// The session cookie(s) forwarded to the endpoint, and only those.
    pub cookies: Vec<String>,
    /// The JSON field with the user id; dots walk into objects (`user.id`).
    pub user_field: String,
    /// The JSON field with the phone number (for SMS), when the answer carries one.
    pub phone_field: Option<String>,
    /// How long a positive answer is reused for the same session cookie(s); 0 = ask every time.
    pub cache_seconds: u64,
    /// Most sessions cached at once.
    pub cache_entries: usize,
    /// Timeout of one call; a slower answer fails closed (503).
    pub timeout_ms: u64,
}

impl Default for Introspection {
    fn default() -> Self {
        Self {
            url: String::new(),
            method: "GET".into(),
            cookies: Vec::new(),
            user_field: "id".into(),
            phone_field: None,
            cache_seconds: 30,
            cache_entries: 10_000,
            timeout_ms: 2000,
        }
    }
}

/// A file of `policy_files`: only a `policies` list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PolicyFile {
    pub policies: Vec<PolicyEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PolicyEntry {
    /// Unique across all policies; shown in logs, metrics and `check-policy`.
    pub name: String,
    /// What the rule looks at; omitted criteria match anything.
    #[serde(rename = "match")]
    pub matcher: PolicyMatch,
    /// Demands step-up with this auth type.
    pub require: Option<Require>,
    /// `allow` or `deny` instead of `require`.
    pub action: Option<String>,
    /// Shown to the user; `{form.x}`, `{query.x}`, `{header.x}` come from the held request.
    pub message: Option<String>,
    /// `challenge` (default) or `hold`.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PolicyMatch {
    /// Exact host names or `*.domain`.
    pub hosts: Vec<String>,
    /// HTTP methods.
    pub methods: Vec<String>,
    /// Path globs: `*` one segment, `**` any number, `*` inside a segment any characters.
    pub paths: Vec<String>,
    /// Client CIDRs.
    pub networks: Vec<String>,
    /// Header name to exact value (`*`: present with any value).
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Require {
    pub auth_type: String,
    /// How long an approval stays valid for this policy; 0 = every request needs one.
    pub freshness_seconds: u64,
    /// Dynamic linking: `[form.amount, form.iban]` (fields of the form or JSON body, `query.x`,
    /// `header.x`), or `body` (the whole body). The approval and its grant are valid for a
    /// request with exactly these values only.
    pub bind: BindSetting,
}

impl Default for Require {
    fn default() -> Self {
        Self {
            auth_type: String::new(),
            freshness_seconds: 300,
            bind: BindSetting::List(Vec::new()),
        }
    }
}

/// `require.bind` as written: a list of fields, or one (`body`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BindSetting {
    One(String),
    List(Vec<String>),
}

impl Default for BindSetting {
    fn default() -> Self {
        BindSetting::List(Vec::new())
    }
}

/// One push provider account, referenced by `applications[].versions[].push_config`.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// Unique name the application versions refer to.
    pub id: String,
    /// `ios` (APNs) or `android` (FCM).
    pub platform: String,
    /// Leave out for the platform's provider (APNs, FCM). `console`: no provider at all, each
    /// push is printed on standard output (demos and local trials only; no other field).
    pub provider: Option<String>,
    /// iOS: the Apple developer team id (the JWT's `iss`).
    pub team_id: Option<String>,
    /// iOS: the id of the APNs auth key (the JWT's `kid`).
    pub key_id: Option<String>,
    /// iOS: the `.p8` auth key file from Apple (PKCS#8 PEM), relative to this config file.
    pub key_file: Option<String>,
    /// Android: the Firebase service-account JSON file (HTTP v1 API), relative to this config file.
    pub service_account_file: Option<String>,
    /// Android: the legacy server key, instead of a service account.
    pub legacy_server_key: Option<String>,
    /// Base URL of the provider's send API; only tests and private relays change it. iOS
    /// default: Apple's production or sandbox host by the app version; Android:
    /// `https://fcm.googleapis.com`.
    pub endpoint: Option<String>,
    /// Android HTTP v1: the OAuth token URL; defaults to the service account's `token_uri`.
    pub token_uri: Option<String>,
    /// Android legacy: the send URL; defaults to `https://fcm.googleapis.com/fcm/send`.
    pub legacy_endpoint: Option<String>,
    /// Extra trusted root certificates (PEM) for a private endpoint, relative to this config file.
    pub ca_file: Option<String>,
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("id", &self.id)
            .field("platform", &self.platform)
            .field("provider", &self.provider)
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("key_file", &self.key_file)
            .field("service_account_file", &self.service_account_file)
            .field("endpoint", &self.endpoint)
            .field("token_uri", &self.token_uri)
            .field("legacy_endpoint", &self.legacy_endpoint)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// An HTTP proxy for every outgoing provider call (APNs, FCM, SMS gateways).
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct OutgoingProxy {
    pub enabled: bool,
    /// `http://host:port` (or `https://`).
    pub url: String,
    /// Send `Proxy-Authorization` with the first request rather than after a challenge.
    pub preemptive_auth: bool,
    /// Basic credentials; `username` and `password` go together.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for OutgoingProxy {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            preemptive_auth: true,
            username: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for OutgoingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingProxy")
            .field("enabled", &self.enabled)
            .field("url", &super::settings::redact_url_password(&self.url))
            .field("preemptive_auth", &self.preemptive_auth)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Application {
    /// Unique id, sent by the app at enrollment and used as `app_id` in API v3.
    pub id: String,
    /// Shown in availability answers (`app_name`).
    pub name: String,
    /// PIN authentication: needed for `push_with_pin` (and as the fallback of the next two).
    pub pin: bool,
    /// Biometric authentication for `push_with_fingerprint`.
    pub fingerprint: bool,
    /// A custom authenticator for `push_with_custom_authenticator`.
    pub custom_authenticator: bool,
    /// Wrong PINs in a row before the device is disconnected; 0 = unlimited. Default 3.
    pub max_pin_attempts: Option<u32>,
    pub versions: Vec<AppVersion>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AppVersion {
    pub version: String,
    /// `ios` or `android`.
    pub platform: String,
    /// The `push_configs[].id` that delivers to this version (its platform must match).
    pub push_config: Option<String>,
    /// iOS: `production` (default) or `development` (the APNs sandbox).
    pub apns_environment: Option<String>,
    /// iOS: the app's bundle id, required with a push config (the `apns-topic`).
    pub bundle_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Enrollment {
    /// Key enrollment (needed for push and OTP).
    pub enabled: bool,
    /// How long a one-time enrollment code is valid.
    pub code_ttl_seconds: u64,
    /// A new server key pair per enrollment instead of one shared pair.
    pub unique_keys_per_enrollment: bool,
    pub push: PushEnrollment,
}

impl Default for Enrollment {
    fn default() -> Self {
        Self {
            enabled: true,
            code_ttl_seconds: 600,
            unique_keys_per_enrollment: false,
            push: PushEnrollment::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PushEnrollment {
    /// Devices may register push tokens.
    pub enrollment_enabled: bool,
    /// Push transactions may be started.
    pub authorization_enabled: bool,
    /// `single` (a second device for the same app fails), `override` (the new one replaces the
    /// old), `multiple` (API v4 only).
    pub mode: String,
}

impl Default for PushEnrollment {
    fn default() -> Self {
        Self {
            enrollment_enabled: true,
            authorization_enabled: true,
            mode: "single".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Geolocation {
    /// A MaxMind-format City or Country database (`.mmdb`), relative to this file. Required
    /// when `features.geolocation` is on; opened and checked at load.
    pub database: Option<String>,
    /// Secure-message templates per lower-case language code, with the placeholders
    /// `[message]`, `[operatingSystem]`, `[browser]`, `[countryCode]`, `[region]`, `[city]`.
    /// `en` (the fallback) is required when any is given; none: the reference's default.
    pub templates: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Otp {
    /// The URL scheme of the deep link that opens the phone app with an OTP code:
    /// `<scheme>://otp?c=<code>` (shown as a QR code and as an "open the app" link).
    pub deep_link_scheme: String,
}

impl Default for Otp {
    fn default() -> Self {
        Self {
            deep_link_scheme: "stepgate".into(),
        }
    }
}
