//! The checked, compiled configuration the rest of the gateway uses: parsed addresses, URLs,
//! durations and a validated set of auth types. Nothing on a request path reads YAML.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use crate::domain::auth_type::AuthTypes;
use crate::domain::code::SecretKey;

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
    pub api_clients: Vec<ApiClient>,
    pub auth_types: AuthTypes,
    pub callbacks: CallbackSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    pub proxy: SocketAddr,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
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
    pub url: String,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url_password(&self.url))
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// A URL fit for logs: any password replaced by `***`.
pub fn redact_url_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable url>".to_owned(),
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

#[derive(Debug, Clone, Default)]
pub struct CallbackSettings {
    pub only_allow_configured: bool,
    pub endpoints: Vec<CallbackEndpoint>,
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
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
