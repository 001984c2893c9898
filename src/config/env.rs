//! `STEPGATE_*` environment overrides, read through a small trait so tests never touch the
//! process environment. Secrets belong here rather than in files.

use std::collections::{BTreeMap, HashMap};

use super::schema::ConfigFile;

/// Where variables come from.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl EnvSource for BTreeMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).map(|value| (*value).to_owned())
    }
}

pub const SECRET_KEY: &str = "STEPGATE_SECRET_KEY";
pub const REDIS_URL: &str = "STEPGATE_REDIS_URL";
pub const REDIS_PASSWORD: &str = "STEPGATE_REDIS_PASSWORD";
pub const REDIS_SENTINEL_PASSWORD: &str = "STEPGATE_REDIS_SENTINEL_PASSWORD";
pub const STORE_BACKEND: &str = "STEPGATE_STORE_BACKEND";
pub const PUBLIC_URL: &str = "STEPGATE_PUBLIC_URL";
pub const LOG_LEVEL: &str = "STEPGATE_LOG_LEVEL";
pub const API_CLIENT_SECRET_PREFIX: &str = "STEPGATE_API_CLIENT_SECRET_";
pub const TWILIO_AUTH_TOKEN: &str = "STEPGATE_TWILIO_AUTH_TOKEN";
pub const SMS_HTTP_PASSWORD: &str = "STEPGATE_SMS_HTTP_PASSWORD";
pub const SMS_HTTP_BEARER_TOKEN: &str = "STEPGATE_SMS_HTTP_BEARER_TOKEN";
pub const JWT_SECRET: &str = "STEPGATE_JWT_SECRET";

/// The variable that carries the secret of `client_id`: upper case, other characters as `_`.
pub fn api_client_secret_var(client_id: &str) -> String {
    let suffix: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{API_CLIENT_SECRET_PREFIX}{suffix}")
}

/// Applies every override that is set and returns which config path each one replaced, so that
/// a bad value is reported against its variable, not a line of the file.
pub fn apply(file: &mut ConfigFile, env: &dyn EnvSource) -> BTreeMap<String, String> {
    let mut origins = BTreeMap::new();
    let mut take = |var: &str, path: &str, slot: &mut String| {
        if let Some(value) = env.get(var) {
            *slot = value;
            origins.insert(path.to_owned(), var.to_owned());
        }
    };
    let mut secret = file.secret_key.clone().unwrap_or_default();
    take(SECRET_KEY, "secret_key", &mut secret);
    if !secret.is_empty() {
        file.secret_key = Some(secret);
    }
    let mut public_url = file.public_url.clone().unwrap_or_default();
    take(PUBLIC_URL, "public_url", &mut public_url);
    if !public_url.is_empty() {
        file.public_url = Some(public_url);
    }
    take(REDIS_URL, "store.redis.url", &mut file.store.redis.url);
    for (var, path, slot) in [
        (
            REDIS_PASSWORD,
            "store.redis.password",
            &mut file.store.redis.password,
        ),
        (
            REDIS_SENTINEL_PASSWORD,
            "store.redis.sentinel.password",
            &mut file.store.redis.sentinel.password,
        ),
    ] {
        let mut value = slot.clone().unwrap_or_default();
        take(var, path, &mut value);
        if !value.is_empty() {
            *slot = Some(value);
        }
    }
    take(STORE_BACKEND, "store.backend", &mut file.store.backend);
    take(LOG_LEVEL, "log.level", &mut file.log.level);
    let sms_secrets = [
        (
            TWILIO_AUTH_TOKEN,
            "sms.twilio.auth_token",
            &mut file.sms.twilio.auth_token,
        ),
        (
            SMS_HTTP_PASSWORD,
            "sms.http.password",
            &mut file.sms.http.password,
        ),
        (
            SMS_HTTP_BEARER_TOKEN,
            "sms.http.bearer_token",
            &mut file.sms.http.bearer_token,
        ),
    ];
    for (var, path, slot) in sms_secrets {
        if let Some(value) = env.get(var) {
            *slot = Some(value);
            origins.insert(path.to_owned(), var.to_owned());
        }
    }
    if let Some(value) = env.get(JWT_SECRET) {
        let identity = file.proxy.identity.get_or_insert_with(Default::default);
        identity.jwt.get_or_insert_with(Default::default).secret = Some(value);
        origins.insert(
            "proxy.identity.jwt.secret".to_owned(),
            JWT_SECRET.to_owned(),
        );
    }
    for (i, client) in file.api_clients.iter_mut().enumerate() {
        let var = api_client_secret_var(&client.client_id);
        if let Some(value) = env.get(&var) {
            client.client_secret = Some(value);
            origins.insert(format!("api_clients[{i}].client_secret"), var);
        }
    }
    origins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_file_values_and_remember_their_origin() {
        let mut file = ConfigFile::default();
        file.api_clients.push(super::super::schema::ApiClient {
            client_id: "my-portal".into(),
            ..Default::default()
        });
        let env = BTreeMap::from([
            (SECRET_KEY, "s3cr3t"),
            (REDIS_URL, "redis://cache:6379/1"),
            ("STEPGATE_API_CLIENT_SECRET_MY_PORTAL", "client-secret"),
        ]);
        let origins = apply(&mut file, &env);
        assert_eq!(file.secret_key.as_deref(), Some("s3cr3t"));
        assert_eq!(file.store.redis.url, "redis://cache:6379/1");
        assert_eq!(
            file.api_clients[0].client_secret.as_deref(),
            Some("client-secret")
        );
        assert_eq!(
            origins.get("store.redis.url").map(String::as_str),
            Some(REDIS_URL)
        );
        assert_eq!(origins.len(), 3);
    }

    #[test]
    fn sms_secrets_come_from_the_environment() {
        let mut file = ConfigFile::default();
        let env = BTreeMap::from([
            (TWILIO_AUTH_TOKEN, "twilio-token"),
            (SMS_HTTP_PASSWORD, "http-password"),
            (SMS_HTTP_BEARER_TOKEN, "http-bearer"),
        ]);
        let origins = apply(&mut file, &env);
        assert_eq!(file.sms.twilio.auth_token.as_deref(), Some("twilio-token"));
        assert_eq!(file.sms.http.password.as_deref(), Some("http-password"));
        assert_eq!(file.sms.http.bearer_token.as_deref(), Some("http-bearer"));
        assert_eq!(
            origins.get("sms.twilio.auth_token").map(String::as_str),
            Some(TWILIO_AUTH_TOKEN)
        );
        assert_eq!(origins.len(), 3);
    }
}
