//! Compiles `push_configs` and `outgoing_proxy`. Ids are unique, each platform's fields are
//! present (and the other platform's absent), URLs are http(s), and every key file is read and
//! proven usable here with a trial signature, so a bad `.p8` or service account fails
//! `stepgate validate` and the boot rather than the first push.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use url::Url;

use super::Problems;
use crate::config::schema;
use crate::config::settings::{
    ApnsSettings, FcmLegacySettings, FcmV1Settings, OutgoingProxySettings, PushConfigSettings,
    PushProviderSettings,
};
use crate::domain::device::Platform;

/// The one `provider` value: pushes printed on standard output.
pub const CONSOLE_PROVIDER: &str = "console";
pub const DEFAULT_FCM_ENDPOINT: &str = "https://fcm.googleapis.com";
pub const DEFAULT_FCM_LEGACY_ENDPOINT: &str = "https://fcm.googleapis.com/fcm/send";

/// Every entry that checked out; the others are reported in `problems`.
pub(super) fn compile(
    raw: &[schema::PushConfig],
    base: &Path,
    problems: &mut Problems,
) -> Vec<PushConfigSettings> {
    let mut ids = HashSet::new();
    let mut compiled = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let at = |field: &str| format!("push_configs[{i}].{field}");
        let before = problems.0.len();
        let id = entry.id.trim();
        if id.is_empty() {
            problems.add(
                at("id"),
                "missing (expected a name such as apns-main, referenced by applications[].versions[].push_config)",
            );
        } else if !ids.insert(id.to_owned()) {
            problems.add(
                at("id"),
                format!("'{id}' is used twice (expected unique push config ids)"),
            );
        }
        let provider = match (
            entry.platform.trim(),
            entry.provider.as_deref().map(str::trim),
        ) {
            (_, Some(other)) if other != CONSOLE_PROVIDER => {
                problems.add(
                    at("provider"),
                    format!(
                        "unknown provider '{other}' (expected console, or leave it out for APNs on ios and FCM on android)"
                    ),
                );
                None
            }
            ("ios", Some(_)) => console(entry, Platform::Ios, &at, problems),
            ("android", Some(_)) => console(entry, Platform::Android, &at, problems),
            ("ios", None) => apns(entry, base, &at, problems).map(PushProviderSettings::Apns),
            ("android", None) => fcm(entry, base, &at, problems),
            ("", _) => {
                problems.add(at("platform"), "missing (expected ios or android)");
                None
            }
            (other, _) => {
                problems.add(
                    at("platform"),
                    format!("unknown platform '{other}' (expected ios or android)"),
                );
                None
            }
        };
        let ca_pem = entry
            .ca_file
            .as_deref()
            .and_then(|file| ca_file(base, file, &at("ca_file"), problems));
        if let Some(provider) = provider
            && problems.0.len() == before
        {
            compiled.push(PushConfigSettings {
                id: id.to_owned(),
                provider,
                ca_pem,
            });
        }
    }
    compiled
}

/// `provider: console`: nothing to deliver with, so every provider field is a mistake.
fn console(
    entry: &schema::PushConfig,
    platform: Platform,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<PushProviderSettings> {
    let before = problems.0.len();
    for (field, set) in [
        ("team_id", entry.team_id.is_some()),
        ("key_id", entry.key_id.is_some()),
        ("key_file", entry.key_file.is_some()),
        ("service_account_file", entry.service_account_file.is_some()),
        ("legacy_server_key", entry.legacy_server_key.is_some()),
        ("endpoint", entry.endpoint.is_some()),
        ("token_uri", entry.token_uri.is_some()),
        ("legacy_endpoint", entry.legacy_endpoint.is_some()),
        ("ca_file", entry.ca_file.is_some()),
    ] {
        if set {
            problems.add(
                at(field),
                "not with provider: console (it prints pushes and calls no provider: remove the field)",
            );
        }
    }
    (problems.0.len() == before).then_some(PushProviderSettings::Console(platform))
}

fn apns(
    entry: &schema::PushConfig,
    base: &Path,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<ApnsSettings> {
    for (field, set) in [
        ("service_account_file", entry.service_account_file.is_some()),
        ("legacy_server_key", entry.legacy_server_key.is_some()),
        ("token_uri", entry.token_uri.is_some()),
        ("legacy_endpoint", entry.legacy_endpoint.is_some()),
    ] {
        if set {
            problems.add(
                at(field),
                "only for platform: android (expected team_id, key_id and key_file for ios)",
            );
        }
    }
    let team_id = apple_id(
        entry.team_id.as_deref(),
        &at("team_id"),
        "the 10-character team id from the Apple developer account",
        problems,
    );
    let key_id = apple_id(
        entry.key_id.as_deref(),
        &at("key_id"),
        "the 10-character id of the APNs auth key",
        problems,
    );
    let key = match non_empty(entry.key_file.as_deref()) {
        None => {
            problems.add(
                at("key_file"),
                "missing (expected the .p8 APNs auth key file from Apple)",
            );
            None
        }
        Some(file) => apns_key(base, file, &at("key_file"), problems).map(|key| (file, key)),
    };
    let endpoint = entry.endpoint.as_deref().and_then(|text| {
        base_url(
            &at("endpoint"),
            text,
            "https://api.push.apple.com",
            problems,
        )
    });
    let (file, key) = key?;
    Some(ApnsSettings {
        team_id: team_id?,
        key_id: key_id?,
        key_file: base.join(file),
        key,
        endpoint,
    })
}

/// Team and key ids are short upper-case alphanumeric strings.
fn apple_id(
    value: Option<&str>,
    path: &str,
    expected: &str,
    problems: &mut Problems,
) -> Option<String> {
    match non_empty(value) {
        None => {
            problems.add(path, format!("missing (expected {expected})"));
            None
        }
        Some(id) if id.chars().all(|c| c.is_ascii_alphanumeric()) => Some(id.to_owned()),
        Some(id) => {
            problems.add(
                path,
                format!("'{id}' is not an Apple id (expected {expected}: letters and digits)"),
            );
            None
        }
    }
}

fn apns_key(base: &Path, file: &str, path: &str, problems: &mut Problems) -> Option<EncodingKey> {
    let pem = read(base, file, path, problems)?;
    let unusable = |why: String| {
        format!(
            "{file} is not an APNs auth key (expected the .p8 file from Apple: a PKCS#8 PEM P-256 private key): {why}"
        )
    };
    let key = match EncodingKey::from_ec_pem(&pem) {
        Ok(key) => key,
        Err(error) => {
            problems.add(path, unusable(error.to_string()));
            return None;
        }
    };
    // Parsing the PEM does not prove the key: signing does.
    if let Err(error) = trial_sign(Algorithm::ES256, &key) {
        problems.add(path, unusable(error.to_string()));
        return None;
    }
    Some(key)
}

fn trial_sign(
    algorithm: Algorithm,
    key: &EncodingKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &serde_json::json!({ "iss": "stepgate-config-check" }),
        key,
    )
}

/// The fields of a Google service-account JSON file that FCM HTTP v1 needs.
#[derive(Deserialize)]
struct ServiceAccount {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    client_email: Option<String>,
    token_uri: Option<String>,
}

fn fcm(
    entry: &schema::PushConfig,
    base: &Path,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<PushProviderSettings> {
    for (field, set) in [
        ("team_id", entry.team_id.is_some()),
        ("key_id", entry.key_id.is_some()),
        ("key_file", entry.key_file.is_some()),
    ] {
        if set {
            problems.add(
                at(field),
                "only for platform: ios (expected service_account_file or legacy_server_key for android)",
            );
        }
    }
    let account_file = non_empty(entry.service_account_file.as_deref());
    let legacy_key = non_empty(entry.legacy_server_key.as_deref());
    match (account_file, legacy_key) {
        (Some(file), None) => {
            if entry.legacy_endpoint.is_some() {
                problems.add(
                    at("legacy_endpoint"),
                    "only with legacy_server_key (expected endpoint and token_uri for a service account)",
                );
            }
            fcm_v1(entry, base, file, at, problems).map(PushProviderSettings::FcmV1)
        }
        (None, Some(key)) => {
            for (field, set) in [
                ("endpoint", entry.endpoint.is_some()),
                ("token_uri", entry.token_uri.is_some()),
            ] {
                if set {
                    problems.add(
                        at(field),
                        "only with service_account_file (expected legacy_endpoint with legacy_server_key)",
                    );
                }
            }
            if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.add(
                    at("legacy_server_key"),
                    "contains spaces or control characters (expected the key exactly as the Firebase console shows it)",
                );
                return None;
            }
            let endpoint = full_url(
                &at("legacy_endpoint"),
                entry
                    .legacy_endpoint
                    .as_deref()
                    .unwrap_or(DEFAULT_FCM_LEGACY_ENDPOINT),
                DEFAULT_FCM_LEGACY_ENDPOINT,
                problems,
            )?;
            Some(PushProviderSettings::FcmLegacy(FcmLegacySettings {
                server_key: key.to_owned(),
                endpoint,
            }))
        }
        (Some(_), Some(_)) => {
            problems.add(
                at("legacy_server_key"),
                "cannot be combined with service_account_file (expected one of them)",
            );
            None
        }
        (None, None) => {
            problems.add(
                at("service_account_file"),
                "missing (expected the Firebase service-account JSON file, or legacy_server_key)",
            );
            None
        }
    }
}

fn fcm_v1(
    entry: &schema::PushConfig,
    base: &Path,
    file: &str,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<FcmV1Settings> {
    let endpoint = base_url(
        &at("endpoint"),
        entry.endpoint.as_deref().unwrap_or(DEFAULT_FCM_ENDPOINT),
        DEFAULT_FCM_ENDPOINT,
        problems,
    );
    let path = at("service_account_file");
    let text = read(base, file, &path, problems)?;
    let expected = "expected the service-account JSON downloaded from the Firebase console";
    let account: ServiceAccount = match serde_json::from_slice(&text) {
        Ok(account) => account,
        Err(error) => {
            problems.add(
                &path,
                format!("{file} is not a service-account JSON file ({expected}): {error}"),
            );
            return None;
        }
    };
    if account.kind.as_deref() != Some("service_account") {
        problems.add(
            &path,
            format!(
                "{file} is not a service account: its type is not \"service_account\" ({expected})"
            ),
        );
        return None;
    }
    let field = |name: &str, value: &Option<String>| {
        non_empty(value.as_deref())
            .map(str::to_owned)
            .ok_or(name.to_owned())
    };
    let fields = (
        field("project_id", &account.project_id),
        field("private_key", &account.private_key),
        field("client_email", &account.client_email),
    );
    let (Ok(project_id), Ok(private_key), Ok(client_email)) = fields else {
        let missing: Vec<String> = [fields.0, fields.1, fields.2]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        problems.add(
            &path,
            format!("{file} lacks {} ({expected})", missing.join(", ")),
        );
        return None;
    };
    let unusable = |why: String| {
        format!(
            "{file}: private_key is not a usable RSA private key in PEM form ({expected}): {why}"
        )
    };
    let key = match EncodingKey::from_rsa_pem(private_key.as_bytes()) {
        Ok(key) => key,
        Err(error) => {
            problems.add(&path, unusable(error.to_string()));
            return None;
        }
    };
    if let Err(error) = trial_sign(Algorithm::RS256, &key) {
        problems.add(&path, unusable(error.to_string()));
        return None;
    }
    let token_uri = match (non_empty(entry.token_uri.as_deref()), account.token_uri) {
        (Some(text), _) => full_url(
            &at("token_uri"),
            text,
            "https://oauth2.googleapis.com/token",
            problems,
        ),
        (None, Some(text)) => match Url::parse(text.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                problems.add(
                    &path,
                    format!("{file}: token_uri '{text}' is not an http(s) URL ({expected})"),
                );
                None
            }
        },
        (None, None) => {
            problems.add(
                &path,
                format!("{file} lacks token_uri ({expected}, or set push_configs[].token_uri)"),
            );
            None
        }
    };
    Some(FcmV1Settings {
        project_id,
        client_email,
        private_key_id: non_empty(account.private_key_id.as_deref()).map(str::to_owned),
        key,
        service_account_file: base.join(file),
        token_uri: token_uri?,
        endpoint: endpoint?,
    })
}

/// The PEM certificates of `file`, checked to hold at least one.
fn ca_file(base: &Path, file: &str, path: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    let pem = read(base, file, path, problems)?;
    let certificates: Result<Vec<CertificateDer<'_>>, _> =
        CertificateDer::pem_slice_iter(&pem).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Some(pem),
        Ok(_) => {
            problems.add(
                path,
                format!("{file} holds no certificate (expected PEM CERTIFICATE blocks)"),
            );
            None
        }
        Err(error) => {
            problems.add(
                path,
                format!("{file} is not a PEM certificate file: {error}"),
            );
            None
        }
    }
}

/// `outgoing_proxy`: `None` when it is off.
pub(super) fn outgoing_proxy(
    raw: &schema::OutgoingProxy,
    problems: &mut Problems,
) -> Option<OutgoingProxySettings> {
    if !raw.enabled {
        return None;
    }
    let url = match non_empty(Some(&raw.url)) {
        None => {
            problems.add(
                "outgoing_proxy.url",
                "missing while enabled (expected the proxy such as http://proxy.internal:3128)",
            );
            None
        }
        Some(text) => match Url::parse(text) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.username().is_empty()
                    && url.password().is_none()
                    && matches!(url.path(), "" | "/")
                    && url.query().is_none() =>
            {
                Some(url)
            }
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                problems.add(
                    "outgoing_proxy.url",
                    "holds credentials (expected them in outgoing_proxy.username and password)",
                );
                None
            }
            _ => {
                problems.add(
                    "outgoing_proxy.url",
                    format!("'{text}' is not an http(s) proxy URL (expected scheme, host and port only, such as http://proxy.internal:3128)"),
                );
                None
            }
        },
    };
    let credentials = match (
        non_empty(raw.username.as_deref()),
        non_empty(raw.password.as_deref()),
    ) {
        (Some(username), Some(password)) => {
            if username.contains(':') {
                problems.add(
                    "outgoing_proxy.username",
                    "contains ':' (Basic credentials cannot carry it in the user name)",
                );
            }
            Some((username.to_owned(), password.to_owned()))
        }
        (None, None) => None,
        _ => {
            problems.add(
                "outgoing_proxy",
                "username and password go together (expected both or neither)",
            );
            None
        }
    };
    Some(OutgoingProxySettings {
        url: url?,
        credentials,
        preemptive_auth: raw.preemptive_auth,
    })
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|value| !value.is_empty())
}

/// An http(s) URL with a host.
fn full_url(path: &str, text: &str, example: &str, problems: &mut Problems) -> Option<Url> {
    match Url::parse(text.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        _ => {
            problems.add(
                path,
                format!("'{text}' is not an http(s) URL (expected e.g. {example})"),
            );
            None
        }
    }
}

/// An http(s) URL onto which API paths are appended: no query or fragment.
fn base_url(path: &str, text: &str, example: &str, problems: &mut Problems) -> Option<Url> {
    let url = full_url(path, text, example, problems)?;
    if url.query().is_some() || url.fragment().is_some() {
        problems.add(
            path,
            format!("'{text}' has a query or fragment (expected a base URL such as {example})"),
        );
        return None;
    }
    Some(url)
}

fn read(base: &Path, file: &str, path: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    let full: PathBuf = base.join(file);
    match std::fs::read(&full) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            problems.add(path, format!("cannot read {file}: {error}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::Command;

    use crate::config::settings::PushProviderSettings;
    use crate::config::{ConfigError, Settings, load_str};

    const BASE: &str = "secret_key: \"0123456789abcdef0123456789abcdef\"\nauth_types: [{ name: sms_code, method: sms, default_messages: { en: \"Code {code}\" } }]\n";

    fn load(extra: &str, base: &Path) -> Result<Settings, ConfigError> {
        let env: BTreeMap<&str, &str> = BTreeMap::new();
        load_str(&format!("{BASE}{extra}"), &base.join("c.yaml"), &env)
    }

    fn problems(extra: &str, base: &Path) -> Vec<String> {
        match load(extra, base) {
            Ok(_) => Vec::new(),
            Err(error) => error.issues().iter().map(|i| i.to_string()).collect(),
        }
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    }

    /// A .p8-shaped key (PKCS#8 PEM P-256) and a service-account JSON with a fresh RSA key.
    fn keys(dir: &Path) {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "AuthKey.p8",
            ],
        );
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rsa.pem",
            ],
        );
        let rsa = std::fs::read_to_string(dir.join("rsa.pem")).unwrap();
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": "stepgate-test",
            "private_key_id": "k1",
            "private_key": rsa,
            "client_email": "push@stepgate-test.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        std::fs::write(dir.join("account.json"), account.to_string()).unwrap();
    }

    const GOOD: &str = "push_configs:\n  - { id: apns-main, platform: ios, team_id: TEAM123456, key_id: KEY1234567, key_file: AuthKey.p8 }\n  - { id: fcm-main, platform: android, service_account_file: account.json, endpoint: \"http://127.0.0.1:9/\" }\n  - { id: fcm-old, platform: android, legacy_server_key: AAAAlegacy }\n";

    #[test]
    fn the_console_provider_needs_no_keys_and_takes_none() {
        let dir = tempfile::tempdir().unwrap();
        let settings = load(
            "push_configs:\n  - { id: demo-a, platform: android, provider: console }\n  - { id: demo-i, platform: ios, provider: console }\n",
            dir.path(),
        )
        .unwrap();
        assert!(matches!(
            settings.push_configs[0].provider,
            PushProviderSettings::Console(crate::domain::device::Platform::Android)
        ));
        assert_eq!(
            settings.push_configs[1].platform(),
            crate::domain::device::Platform::Ios
        );

        let found = problems(
            "push_configs:\n  - { id: a, platform: android, provider: console, legacy_server_key: k, endpoint: \"http://127.0.0.1:9/\" }\n  - { id: b, platform: ios, provider: pigeon }\n  - { id: c, provider: console }\n",
            dir.path(),
        );
        let has = |needle: &str| found.iter().any(|p| p.contains(needle));
        assert!(
            has("push_configs[0].legacy_server_key: not with provider: console"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[0].endpoint: not with provider: console"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[1].provider: unknown provider 'pigeon' (expected console"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[2].platform: missing (expected ios or android)"),
            "{found:#?}"
        );
    }

    #[test]
    fn good_push_configs_compile_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        keys(dir.path());
        let settings = load(GOOD, dir.path()).unwrap();
        assert_eq!(settings.push_configs.len(), 3);
        let PushProviderSettings::Apns(apns) = &settings.push_configs[0].provider else {
            panic!("apns expected")
        };
        assert_eq!(apns.team_id, "TEAM123456");
        assert_eq!(apns.key_file, dir.path().join("AuthKey.p8"));
        assert!(apns.endpoint.is_none());
        let PushProviderSettings::FcmV1(fcm) = &settings.push_configs[1].provider else {
            panic!("fcm v1 expected")
        };
        assert_eq!(fcm.project_id, "stepgate-test");
        assert_eq!(
            fcm.token_uri.as_str(),
            "https://oauth2.googleapis.com/token"
        );
        assert_eq!(fcm.endpoint.as_str(), "http://127.0.0.1:9/");
        assert_eq!(fcm.private_key_id.as_deref(), Some("k1"));
        let PushProviderSettings::FcmLegacy(legacy) = &settings.push_configs[2].provider else {
            panic!("legacy expected")
        };
        assert_eq!(
            legacy.endpoint.as_str(),
            "https://fcm.googleapis.com/fcm/send"
        );
        assert!(settings.outgoing_proxy.is_none());
        // No key material in debug output.
        let shown = format!("{:?}", settings.push_configs);
        assert!(
            !shown.contains("AAAAlegacy") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }

    #[test]
    fn unreadable_and_garbage_key_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        keys(dir.path());
        std::fs::write(
            dir.path().join("garbage.p8"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notjson.json"), "{ nope").unwrap();
        let found = problems(
            "push_configs:\n  - { id: a, platform: ios, team_id: T1, key_id: K1, key_file: missing.p8 }\n  - { id: b, platform: ios, team_id: T1, key_id: K1, key_file: garbage.p8 }\n  - { id: c, platform: android, service_account_file: notjson.json }\n  - { id: d, platform: ios, team_id: T1, key_id: K1, key_file: rsa.pem }\n",
            dir.path(),
        );
        let has = |needle: &str| found.iter().any(|p| p.contains(needle));
        assert!(
            has("push_configs[0].key_file: cannot read missing.p8"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[1].key_file: garbage.p8 is not an APNs auth key"),
            "{found:#?}"
        );
        assert!(
            has(
                "push_configs[2].service_account_file: notjson.json is not a service-account JSON file"
            ),
            "{found:#?}"
        );
        // An RSA key where the P-256 .p8 belongs.
        assert!(
            has("push_configs[3].key_file: rsa.pem is not an APNs auth key"),
            "{found:#?}"
        );
        // Located on the entry's line.
        assert!(found.iter().any(|p| p.contains("c.yaml:4:")), "{found:#?}");
    }

    #[test]
    fn a_service_account_with_a_broken_key_or_missing_fields_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let broken = serde_json::json!({
            "type": "service_account",
            "project_id": "p",
            "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "client_email": "a@b",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        std::fs::write(dir.path().join("broken.json"), broken.to_string()).unwrap();
        std::fs::write(
            dir.path().join("thin.json"),
            r#"{"type":"service_account","project_id":"p"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("user.json"),
            r#"{"type":"authorized_user"}"#,
        )
        .unwrap();
        let found = problems(
            "push_configs:\n  - { id: a, platform: android, service_account_file: broken.json }\n  - { id: b, platform: android, service_account_file: thin.json }\n  - { id: c, platform: android, service_account_file: user.json }\n",
            dir.path(),
        );
        let has = |needle: &str| found.iter().any(|p| p.contains(needle));
        assert!(
            has("broken.json: private_key is not a usable RSA private key"),
            "{found:#?}"
        );
        assert!(
            has("thin.json lacks private_key, client_email"),
            "{found:#?}"
        );
        assert!(has("user.json is not a service account"), "{found:#?}");
    }

    #[test]
    fn ids_platforms_and_fields_are_checked_per_platform() {
        let dir = tempfile::tempdir().unwrap();
        keys(dir.path());
        let found = problems(
            "push_configs:\n  - { id: x, platform: ios, team_id: \"T 1\", key_file: AuthKey.p8, legacy_server_key: k }\n  - { id: x, platform: android }\n  - { id: y, platform: windows }\n  - { id: z, platform: android, legacy_server_key: k, service_account_file: account.json }\n  - { id: w, platform: android, service_account_file: account.json, endpoint: \"ftp://x\", token_uri: \"nope\" }\n  - { id: v, platform: ios, team_id: T1, key_id: K1, key_file: AuthKey.p8, ca_file: account.json }\n",
            dir.path(),
        );
        let has = |needle: &str| found.iter().any(|p| p.contains(needle));
        assert!(
            has("push_configs[0].team_id: 'T 1' is not an Apple id"),
            "{found:#?}"
        );
        assert!(has("push_configs[0].key_id: missing"), "{found:#?}");
        assert!(
            has("push_configs[0].legacy_server_key: only for platform: android"),
            "{found:#?}"
        );
        assert!(has("push_configs[1].id: 'x' is used twice"), "{found:#?}");
        assert!(
            has("push_configs[1].service_account_file: missing"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[2].platform: unknown platform 'windows'"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[3].legacy_server_key: cannot be combined"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[4].endpoint: 'ftp://x' is not an http(s) URL"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[4].token_uri: 'nope' is not an http(s) URL"),
            "{found:#?}"
        );
        assert!(
            has("push_configs[5].ca_file: account.json holds no certificate"),
            "{found:#?}"
        );
    }

    #[test]
    fn the_outgoing_proxy_is_checked_only_when_enabled() {
        let dir = Path::new("/nonexistent");
        assert!(problems("outgoing_proxy: { url: \"not a url\" }\n", dir).is_empty());
        let found = problems(
            "outgoing_proxy: { enabled: true, url: \"http://u:p@proxy:3128\", username: only }\n",
            dir,
        );
        let has = |needle: &str| found.iter().any(|p| p.contains(needle));
        assert!(has("outgoing_proxy.url: holds credentials"), "{found:#?}");
        assert!(
            has("outgoing_proxy: username and password go together"),
            "{found:#?}"
        );
        let missing = problems("outgoing_proxy: { enabled: true }\n", dir);
        assert!(
            missing
                .iter()
                .any(|p| p.contains("outgoing_proxy.url: missing while enabled")),
            "{missing:#?}"
        );
        let settings = load(
            "outgoing_proxy: { enabled: true, url: \"http://proxy.internal:3128\", username: gate, password: hunter2 }\n",
            dir,
        )
        .unwrap();
        let proxy = settings.outgoing_proxy.unwrap();
        assert_eq!(proxy.url.as_str(), "http://proxy.internal:3128/");
        assert_eq!(proxy.credentials, Some(("gate".into(), "hunter2".into())));
        assert!(proxy.preemptive_auth);
        assert!(!format!("{proxy:?}").contains("hunter2"));
    }
}
