//! Compiles the `proxy:` section: the upstream (resolved once, here, so the request path never
//! does DNS and never panics on a failed lookup), trusted proxies, identity (JWT keys read and
//! parsed here; JWKS and introspection endpoints checked), limits.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use url::Url;

use super::{Problems, parse_network, valid_header_name};
use crate::config::schema;
use crate::config::settings::{
    IdentitySettings, IntrospectionSettings, JwksUrlSettings, JwtSettings, KeysById, ProxySettings,
    UpstreamSettings,
};
use crate::domain::assertion::{AssertionKey, AssertionSigner};
use crate::domain::canonical::RouterModel;

/// Bounds `max_held_body_bytes`: the held body travels through the store.
const MAX_HELD_BODY_BYTES: u64 = 64 * 1024 * 1024;

pub(super) fn compile(
    raw: &schema::Proxy,
    base: &Path,
    public_url: Option<&Url>,
    problems: &mut Problems,
) -> Option<ProxySettings> {
    let assertion = raw
        .assertion
        .as_ref()
        .map(|assertion| self::assertion(assertion, base, public_url, problems));
    let upstream = raw
        .upstream
        .as_ref()
        .map(|upstream| self::upstream(upstream, problems));
    let held = raw.max_held_body_bytes;
    if !(1..=MAX_HELD_BODY_BYTES).contains(&held) {
        problems.add(
            "proxy.max_held_body_bytes",
            format!("{held} is out of range (expected 1 to {MAX_HELD_BODY_BYTES})"),
        );
    }
    let mut trusted_proxies = Vec::new();
    for (i, text) in raw.trusted_proxies.iter().enumerate() {
        match parse_network(text.trim()) {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => problems.add(
                format!("proxy.trusted_proxies[{i}]"),
                format!("'{text}' is not a network (expected a CIDR such as 10.0.0.0/8)"),
            ),
        }
    }
    let identity = raw
        .identity
        .as_ref()
        .map(|identity| self::identity(identity, base, &trusted_proxies, problems));
    let login_url = raw
        .login_url
        .as_ref()
        .and_then(|text| match Url::parse(text.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                problems.add(
                    "proxy.login_url",
                    format!(
                        "'{text}' is not an http(s) URL (expected e.g. https://app.example/login)"
                    ),
                );
                None
            }
        });
    let reload_interval = match raw.reload_interval_seconds {
        0 => None,
        seconds => Some(Duration::from_secs(seconds)),
    };
    let upstream = match upstream {
        Some(Some(upstream)) => Some(upstream),
        Some(None) => return None,
        None => None,
    };
    let identity = match identity {
        Some(Some(identity)) => Some(identity),
        Some(None) => return None,
        None => None,
    };
    let assertion = match assertion {
        Some(Some(signer)) => Some(signer),
        Some(None) => return None,
        None => None,
    };
    Some(ProxySettings {
        upstream,
        max_held_body_bytes: usize::try_from(held).unwrap_or(usize::MAX),
        trusted_proxies,
        identity,
        login_url,
        reload_interval,
        assertion,
    })
}

/// Bounds `proxy.assertion.ttl_seconds`: an assertion is for the request it travels with.
const ASSERTION_TTL_SECONDS: std::ops::RangeInclusive<u64> = 5..=3600;

fn assertion(
    raw: &schema::Assertion,
    base: &Path,
    public_url: Option<&Url>,
    problems: &mut Problems,
) -> Option<AssertionSigner> {
    if !ASSERTION_TTL_SECONDS.contains(&raw.ttl_seconds) {
        problems.add(
            "proxy.assertion.ttl_seconds",
            format!(
                "{} is out of range (expected {} to {})",
                raw.ttl_seconds,
                ASSERTION_TTL_SECONDS.start(),
                ASSERTION_TTL_SECONDS.end()
            ),
        );
    }
    let pem = read(base, &raw.key_file, "proxy.assertion.key_file", problems)?;
    let key = match AssertionKey::from_pem(&String::from_utf8_lossy(&pem)) {
        Ok(key) => key,
        Err(error) => {
            problems.add(
                "proxy.assertion.key_file",
                format!("{}: {error}", raw.key_file),
            );
            return None;
        }
    };
    let issuer = match (&raw.issuer, public_url) {
        (Some(issuer), _) if !issuer.trim().is_empty() => issuer.trim().to_owned(),
        (_, Some(url)) => url.as_str().to_owned(),
        _ => "stepgate".to_owned(),
    };
    Some(AssertionSigner {
        key,
        issuer,
        audience: raw
            .audience
            .as_ref()
            .map(|aud| aud.trim().to_owned())
            .filter(|aud| !aud.is_empty()),
        ttl: Duration::from_secs(raw.ttl_seconds),
    })
}

fn upstream(raw: &schema::Upstream, problems: &mut Problems) -> Option<UpstreamSettings> {
    let address = raw.address.trim();
    let host = address
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'));
    let resolved: Option<SocketAddr> = match host {
        Some(host) if !host.is_empty() => address
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next()),
        _ => None,
    };
    let Some(addr) = resolved else {
        problems.add(
            "proxy.upstream.address",
            format!("'{address}' is not a reachable host:port (expected e.g. 127.0.0.1:3000 or app.internal:8080; host names must resolve when the config loads)"),
        );
        return None;
    };
    let sni = match &raw.sni {
        Some(sni) if !sni.trim().is_empty() => sni.trim().to_owned(),
        _ => host.unwrap_or_default().to_owned(),
    };
    Some(UpstreamSettings {
        address: address.to_owned(),
        addr,
        tls: raw.tls,
        sni,
        router: RouterModel {
            case_insensitive: raw.router.case_insensitive,
            path_parameters: raw.router.path_parameters,
            format_suffix: raw.router.format_suffix,
            method_override: raw.router.method_override,
        },
    })
}

fn identity(
    raw: &schema::Identity,
    base: &Path,
    trusted_proxies: &[IpNet],
    problems: &mut Problems,
) -> Option<IdentitySettings> {
    let sources = [
        raw.header.is_some(),
        raw.jwt.is_some(),
        raw.introspection.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if sources != 1 {
        let what = if sources == 0 {
            "none of header, jwt and introspection is set (expected exactly one)"
        } else {
            "more than one of header, jwt and introspection is set (expected exactly one)"
        };
        problems.add("proxy.identity", what);
        return None;
    }
    if raw.header.is_none() {
        if raw.phone_header.is_some() {
            problems.add(
                "proxy.identity.phone_header",
                "only with identity.header (expected jwt.phone_claim or introspection.phone_field)",
            );
        }
        if raw.allow_untrusted_headers {
            problems.add(
                "proxy.identity.allow_untrusted_headers",
                "only with identity.header",
            );
        }
    }
    if let Some(header) = &raw.header {
        let user = header_name("proxy.identity.header", header, problems);
        let phone = raw
            .phone_header
            .as_ref()
            .map(|phone| header_name("proxy.identity.phone_header", phone, problems));
        if trusted_proxies.is_empty() && !raw.allow_untrusted_headers {
            problems.add(
                "proxy.identity.header",
                "needs proxy.trusted_proxies: identity headers are believed only from the proxies \
                 that set them, and with none listed every client could name itself (expected \
                 the CIDRs of your auth layer, or allow_untrusted_headers: true for a local demo)",
            );
            return None;
        }
        if user.is_some() && user == phone.clone().flatten() {
            problems.add(
                "proxy.identity.phone_header",
                "the same header as identity.header (expected two headers)",
            );
            return None;
        }
        return Some(IdentitySettings::Header {
            user: user?,
            phone: match phone {
                Some(phone) => Some(phone?),
                None => None,
            },
            from_any_peer: raw.allow_untrusted_headers,
        });
    }
    if let Some(jwt) = &raw.jwt {
        return self::jwt(jwt, base, problems).map(|jwt| IdentitySettings::Jwt(Box::new(jwt)));
    }
    raw.introspection.as_ref().and_then(|introspection| {
        self::introspection(introspection, problems)
            .map(|settings| IdentitySettings::Introspection(Box::new(settings)))
    })
}

fn header_name(path: &str, name: &str, problems: &mut Problems) -> Option<String> {
    let name = name.trim();
    if valid_header_name(name) {
        Some(name.to_ascii_lowercase())
    } else {
        problems.add(
            path,
            format!("'{name}' is not a header name (expected e.g. X-User-Id)"),
        );
        None
    }
}

/// A cookie name as RFC 6265 allows it (a token).
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c))
}

/// An http(s) URL, for the JWKS and introspection endpoints.
fn endpoint_url(path: &str, text: &str, example: &str, problems: &mut Problems) -> Option<Url> {
    let text = text.trim();
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        parsed => {
            // A password in the URL stays out of the report.
            let shown = match parsed {
                Ok(url) if url.password().is_some() => {
                    crate::config::settings::redact_url_password(text)
                }
                _ => text.to_owned(),
            };
            problems.add(
                path,
                format!("'{shown}' is not an http(s) URL (expected e.g. {example})"),
            );
            None
        }
    }
}

fn jwt(raw: &schema::Jwt, base: &Path, problems: &mut Problems) -> Option<JwtSettings> {
    let algorithm = match raw.algorithm.trim() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            problems.add(
                "proxy.identity.jwt.algorithm",
                format!("'{other}' is not supported (expected HS256, RS256, ES256 or EdDSA)"),
            );
            return None;
        }
    };
    let sources = [
        raw.secret.is_some(),
        raw.public_key_file.is_some(),
        raw.jwks_file.is_some(),
        raw.jwks_url.is_some(),
    ];
    if sources.iter().filter(|set| **set).count() != 1 {
        problems.add(
            "proxy.identity.jwt",
            "expected exactly one of secret (HS256), public_key_file, jwks_file or jwks_url (RS256, ES256, EdDSA)",
        );
        return None;
    }
    let mut jwks_url = None;
    let keys = match (algorithm, &raw.secret, &raw.public_key_file, &raw.jwks_file) {
        (Algorithm::HS256, Some(secret), _, _) => {
            if secret.len() < 32 {
                problems.add(
                    "proxy.identity.jwt.secret",
                    format!("too short: {} bytes (expected at least 32)", secret.len()),
                );
                return None;
            }
            vec![(None, DecodingKey::from_secret(secret.as_bytes()))]
        }
        (Algorithm::HS256, None, _, _) => {
            problems.add(
                "proxy.identity.jwt.secret",
                "missing (HS256 needs a shared secret, here or in STEPGATE_JWT_SECRET)",
            );
            return None;
        }
        (_, Some(_), _, _) => {
            problems.add(
                "proxy.identity.jwt.secret",
                "only for HS256 (expected public_key_file, jwks_file or jwks_url for RS256, ES256 and EdDSA)",
            );
            return None;
        }
        (_, None, Some(file), _) => {
            let pem = read(base, file, "proxy.identity.jwt.public_key_file", problems)?;
            let key = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_ec_pem(&pem),
            };
            match key {
                Ok(key) => vec![(None, key)],
                Err(error) => {
                    problems.add(
                        "proxy.identity.jwt.public_key_file",
                        format!("{file} is not a {algorithm:?} public key in PEM form: {error}"),
                    );
                    return None;
                }
            }
        }
        (_, None, None, Some(file)) => {
            let text = read(base, file, "proxy.identity.jwt.jwks_file", problems)?;
            let set: JwkSet = match serde_json::from_slice(&text) {
                Ok(set) => set,
                Err(error) => {
                    problems.add(
                        "proxy.identity.jwt.jwks_file",
                        format!("{file} is not a JWKS document: {error}"),
                    );
                    return None;
                }
            };
            let (keys, skipped) = jwks_keys(&set, algorithm);
            for (i, why) in skipped {
                problems.add(
                    "proxy.identity.jwt.jwks_file",
                    format!("{file}: key {i} cannot be used: {why}"),
                );
            }
            if keys.is_empty() {
                problems.add(
                    "proxy.identity.jwt.jwks_file",
                    format!("{file} holds no usable {algorithm:?} key (expected at least one)"),
                );
                return None;
            }
            keys
        }
        (_, None, None, None) => {
            let url = endpoint_url(
                "proxy.identity.jwt.jwks_url",
                raw.jwks_url.as_deref().unwrap_or_default(),
                "https://idp.example/.well-known/jwks.json",
                problems,
            );
            if raw.jwks_min_refetch_seconds == 0 || raw.jwks_min_refetch_seconds > 3600 {
                problems.add(
                    "proxy.identity.jwt.jwks_min_refetch_seconds",
                    format!(
                        "{} is out of range (expected 1 to 3600)",
                        raw.jwks_min_refetch_seconds
                    ),
                );
            }
            if raw.jwks_refresh_seconds < raw.jwks_min_refetch_seconds {
                problems.add(
                    "proxy.identity.jwt.jwks_refresh_seconds",
                    format!(
                        "{} is below jwks_min_refetch_seconds ({})",
                        raw.jwks_refresh_seconds, raw.jwks_min_refetch_seconds
                    ),
                );
            }
            if !(1..=60_000).contains(&raw.jwks_timeout_ms) {
                problems.add(
                    "proxy.identity.jwt.jwks_timeout_ms",
                    format!(
                        "{} is out of range (expected 1 to 60000)",
                        raw.jwks_timeout_ms
                    ),
                );
            }
            jwks_url = Some(JwksUrlSettings {
                url: url?,
                refresh: Duration::from_secs(raw.jwks_refresh_seconds),
                min_refetch: Duration::from_secs(raw.jwks_min_refetch_seconds),
                timeout: Duration::from_millis(raw.jwks_timeout_ms),
            });
            Vec::new()
        }
    };
    if raw.user_claim.trim().is_empty() {
        problems.add(
            "proxy.identity.jwt.user_claim",
            "empty (expected a claim name such as sub)",
        );
    }
    if let Some(cookie) = &raw.cookie
        && !valid_cookie_name(cookie.trim())
    {
        problems.add(
            "proxy.identity.jwt.cookie",
            format!("'{cookie}' is not a cookie name"),
        );
    }
    if raw.leeway_seconds > 300 {
        problems.add(
            "proxy.identity.jwt.leeway_seconds",
            format!("{} is out of range (expected 0 to 300)", raw.leeway_seconds),
        );
    }
    let mut validation = Validation::new(algorithm);
    validation.leeway = raw.leeway_seconds;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // jsonwebtoken checks `iss`/`aud` only when the token carries them, unless they are
    // required: a token without them must not pass when they are configured.
    let mut required = vec!["exp"];
    if let Some(issuer) = raw.issuer.as_deref().map(str::trim) {
        if issuer.is_empty() {
            problems.add(
                "proxy.identity.jwt.issuer",
                "empty (expected the iss of your tokens)",
            );
        }
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match raw.audience.as_deref().map(str::trim) {
        Some(audience) => {
            if audience.is_empty() {
                problems.add(
                    "proxy.identity.jwt.audience",
                    "empty (expected the aud of your tokens)",
                );
            }
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    Some(JwtSettings {
        cookie: raw.cookie.as_ref().map(|c| c.trim().to_owned()),
        keys,
        jwks_url,
        validation,
        user_claim: raw.user_claim.trim().to_owned(),
        phone_claim: raw
            .phone_claim
            .as_ref()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty()),
    })
}

/// The keys of a JWKS usable with `algorithm` (key type, curve, `alg` and `use` fitting), by
/// `kid`; and why the others are not (their index in the set).
pub fn jwks_keys(set: &JwkSet, algorithm: Algorithm) -> (KeysById, Vec<(usize, String)>) {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, PublicKeyUse};
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let fits = match (&jwk.algorithm, algorithm) {
            (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
                ec.curve == EllipticCurve::P256
            }
            (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
                okp.curve == EllipticCurve::Ed25519
            }
            _ => false,
        };
        if !fits {
            skipped.push((i, format!("not a {algorithm:?} key")));
            continue;
        }
        if let Some(alg) = jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{algorithm:?}")
        {
            skipped.push((i, format!("its alg is {alg:?}, not {algorithm:?}")));
            continue;
        }
        if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
            skipped.push((i, "its use is not sig".to_owned()));
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push((jwk.common.key_id.clone(), key)),
            Err(error) => skipped.push((i, error.to_string())),
        }
    }
    (keys, skipped)
}

fn introspection(
    raw: &schema::Introspection,
    problems: &mut Problems,
) -> Option<IntrospectionSettings> {
    const PATH: &str = "proxy.identity.introspection";
    let url = if raw.url.trim().is_empty() {
        problems.add(
            format!("{PATH}.url"),
            "missing (expected the app's who-am-I endpoint, e.g. http://127.0.0.1:3000/api/me)",
        );
        None
    } else {
        endpoint_url(
            &format!("{PATH}.url"),
            &raw.url,
            "http://127.0.0.1:3000/api/me",
            problems,
        )
    };
    let method = match raw.method.trim().to_ascii_uppercase().as_str() {
        "GET" => Some(http::Method::GET),
        "POST" => Some(http::Method::POST),
        other => {
            problems.add(
                format!("{PATH}.method"),
                format!("'{other}' is not supported (expected GET or POST)"),
            );
            None
        }
    };
    if raw.cookies.is_empty() {
        problems.add(
            format!("{PATH}.cookies"),
            "empty (expected the name of the session cookie, e.g. [session])",
        );
    }
    let mut cookies: Vec<String> = Vec::new();
    for (i, name) in raw.cookies.iter().enumerate() {
        let name = name.trim();
        if !valid_cookie_name(name) {
            problems.add(
                format!("{PATH}.cookies[{i}]"),
                format!("'{name}' is not a cookie name"),
            );
        } else if cookies.iter().any(|seen| seen == name) {
            problems.add(format!("{PATH}.cookies[{i}]"), format!("'{name}' twice"));
        } else {
            cookies.push(name.to_owned());
        }
    }
    let field = |path: &str, text: &str, problems: &mut Problems| {
        let parts: Vec<String> = text.trim().split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) {
            problems.add(
                format!("{PATH}.{path}"),
                format!("'{text}' is not a field path (expected e.g. id or user.id)"),
            );
            None
        } else {
            Some(parts)
        }
    };
    let user_field = field("user_field", &raw.user_field, problems);
    let phone_field = raw
        .phone_field
        .as_ref()
        .map(|text| field("phone_field", text, problems));
    if raw.cache_seconds > 3600 {
        problems.add(
            format!("{PATH}.cache_seconds"),
            format!("{} is out of range (expected 0 to 3600)", raw.cache_seconds),
        );
    }
    if !(1..=1_000_000).contains(&raw.cache_entries) {
        problems.add(
            format!("{PATH}.cache_entries"),
            format!(
                "{} is out of range (expected 1 to 1000000)",
                raw.cache_entries
            ),
        );
    }
    if !(1..=60_000).contains(&raw.timeout_ms) {
        problems.add(
            format!("{PATH}.timeout_ms"),
            format!("{} is out of range (expected 1 to 60000)", raw.timeout_ms),
        );
    }
    Some(IntrospectionSettings {
        url: url?,
        method: method?,
        cookies,
        user_field: user_field?,
        phone_field: match phone_field {
            Some(field) => Some(field?),
            None => None,
        },
        cache_ttl: Duration::from_secs(raw.cache_seconds),
        cache_entries: raw.cache_entries,
        timeout: Duration::from_millis(raw.timeout_ms),
    })
}

fn read(base: &Path, file: &str, path: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(base.join(file)) {
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
    use std::time::Duration;

    use crate::config::settings::IdentitySettings;
    use crate::config::{ConfigError, Settings, load_str};

    const BASE: &str = "secret_key: \"0123456789abcdef0123456789abcdef\"\nauth_types: [{ name: sms_code, method: sms, default_messages: { en: \"Code {code}\" } }]\n";

    fn load(extra: &str, base: &Path) -> Result<Settings, ConfigError> {
        let env: BTreeMap<&str, &str> = BTreeMap::new();
        load_str(&format!("{BASE}{extra}"), &base.join("c.yaml"), &env)
    }

    fn problems(extra: &str) -> Vec<String> {
        match load(extra, Path::new("/nonexistent")) {
            Ok(_) => Vec::new(),
            Err(error) => error
                .issues()
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect(),
        }
    }

    #[test]
    fn an_upstream_is_resolved_at_load_and_bad_ones_are_located() {
        let settings = load(
            "proxy: { upstream: { address: \"localhost:3000\" } }\n",
            Path::new("."),
        )
        .unwrap();
        let upstream = settings.proxy.upstream.unwrap();
        assert_eq!(upstream.addr.port(), 3000);
        assert!(upstream.addr.ip().is_loopback());
        assert_eq!(upstream.sni, "localhost");
        let found = problems("proxy: { upstream: { address: \"no-port\" } }\n");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("proxy.upstream.address: 'no-port'")),
            "{found:?}"
        );
    }

    #[test]
    fn step_up_policies_need_an_identity() {
        let policy = "policies: [{ name: t, match: { paths: [\"/t\"] }, require: { auth_type: sms_code } }]\n";
        let found = problems(policy);
        assert!(
            found
                .iter()
                .any(|p| p.contains("proxy.identity: missing, but policy 't' demands step-up")),
            "{found:?}"
        );
        let with_identity = format!(
            "{policy}proxy: {{ trusted_proxies: [\"10.0.0.0/8\"], identity: {{ header: X-User-Id }} }}\n"
        );
        assert!(problems(&with_identity).is_empty());
    }

    #[test]
    fn identity_must_be_one_well_formed_source() {
        let both = problems(
            "proxy: { identity: { header: X-User, jwt: { algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\" } } }\n",
        );
        assert!(
            both.iter()
                .any(|p| p.contains("more than one of header, jwt and introspection")),
            "{both:?}"
        );
        let short = problems("proxy: { identity: { jwt: { algorithm: HS256, secret: short } } }\n");
        assert!(
            short
                .iter()
                .any(|p| p.starts_with("proxy.identity.jwt.secret: too short")),
            "{short:?}"
        );
        let alg = problems(
            "proxy: { identity: { jwt: { algorithm: none, secret: \"0123456789abcdef0123456789abcdef\" } } }\n",
        );
        assert!(
            alg.iter().any(|p| p.contains("'none' is not supported")),
            "{alg:?}"
        );
        let missing = problems(
            "proxy: { identity: { jwt: { algorithm: RS256, public_key_file: absent.pem } } }\n",
        );
        assert!(
            missing.iter().any(
                |p| p.starts_with("proxy.identity.jwt.public_key_file: cannot read absent.pem")
            ),
            "{missing:?}"
        );
        let header = problems(
            "proxy: { trusted_proxies: [\"10.0.0.0/8\"], identity: { header: \"bad header\" } }\n",
        );
        assert!(
            header
                .iter()
                .any(|p| p.starts_with("proxy.identity.header: 'bad header'")),
            "{header:?}"
        );
    }

    #[test]
    fn jwks_and_pem_keys_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        // An EC P-256 public key and the same key as a JWK.
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\nq9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n-----END PUBLIC KEY-----\n";
        std::fs::write(dir.path().join("key.pem"), pem).unwrap();
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"EVs_o5-uQbTjL3chynL4wXgUg2R9q9UU8I5mEovUf84","y":"kGe5DgSIycKp8w9aJmoHhB1sB3QTugfnRWm5nU_TzsY"}]}"#;
        std::fs::write(dir.path().join("keys.json"), jwks).unwrap();
        let settings = load(
            "proxy: { identity: { jwt: { algorithm: ES256, public_key_file: key.pem } } }\n",
            dir.path(),
        )
        .unwrap();
        assert!(matches!(
            settings.proxy.identity,
            Some(IdentitySettings::Jwt(_))
        ));
        let settings = load("proxy: { identity: { jwt: { algorithm: ES256, jwks_file: keys.json, phone_claim: phone } } }\n", dir.path()).unwrap();
        let Some(IdentitySettings::Jwt(jwt)) = settings.proxy.identity else {
            panic!("jwt expected")
        };
        assert_eq!(jwt.keys.len(), 1);
        assert_eq!(jwt.keys[0].0.as_deref(), Some("k1"));
        assert_eq!(jwt.user_claim, "sub");
    }

    #[test]
    fn identity_headers_need_trusted_proxies_unless_explicitly_allowed() {
        let found = problems("proxy: { identity: { header: X-User-Id } }\n");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("proxy.identity.header: needs proxy.trusted_proxies")),
            "{found:?}"
        );
        let demo = load(
            "proxy: { identity: { header: X-User-Id, phone_header: X-Phone, allow_untrusted_headers: true } }\n",
            Path::new("."),
        )
        .unwrap();
        assert!(matches!(
            demo.proxy.identity,
            Some(IdentitySettings::Header {
                from_any_peer: true,
                ..
            })
        ));
        let trusted = load(
            "proxy: { trusted_proxies: [\"10.0.0.0/8\"], identity: { header: X-User-Id } }\n",
            Path::new("."),
        )
        .unwrap();
        assert!(matches!(
            trusted.proxy.identity,
            Some(IdentitySettings::Header {
                from_any_peer: false,
                ..
            })
        ));
        let misplaced = problems(
            "proxy: { identity: { allow_untrusted_headers: true, jwt: { algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\" } } }\n",
        );
        assert!(
            misplaced
                .iter()
                .any(|p| p.starts_with("proxy.identity.allow_untrusted_headers: only with")),
            "{misplaced:?}"
        );
    }

    #[test]
    fn identity_jwt_issuer_and_audience_become_required_claims() {
        let settings = load(
            "proxy: { identity: { jwt: { algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\", issuer: \"https://idp\", audience: bank } } }\n",
            Path::new("."),
        )
        .unwrap();
        let Some(IdentitySettings::Jwt(jwt)) = settings.proxy.identity else {
            panic!("jwt expected")
        };
        for claim in ["exp", "iss", "aud"] {
            assert!(
                jwt.validation.required_spec_claims.contains(claim),
                "{claim}"
            );
        }
        assert!(jwt.validation.validate_nbf);
        assert_eq!(jwt.validation.algorithms, [jsonwebtoken::Algorithm::HS256]);
        assert_eq!(jwt.phone_claim.as_deref(), Some("phone_number"));
    }

    #[test]
    fn identity_jwks_urls_and_introspection_are_checked() {
        let settings = load(
            "proxy: { identity: { jwt: { algorithm: EdDSA, jwks_url: \"http://127.0.0.1:1/jwks\" } } }\n",
            Path::new("."),
        )
        .unwrap();
        let Some(IdentitySettings::Jwt(jwt)) = settings.proxy.identity else {
            panic!("jwt expected")
        };
        let remote = jwt.jwks_url.unwrap();
        assert_eq!(remote.min_refetch, Duration::from_secs(30));
        assert!(jwt.keys.is_empty());
        let bad = problems(
            "proxy: { identity: { jwt: { algorithm: ES256, jwks_url: \"ftp://x\", jwks_min_refetch_seconds: 0 } } }\n",
        );
        assert!(
            bad.iter()
                .any(|p| p.starts_with("proxy.identity.jwt.jwks_url: 'ftp://x")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|p| p.starts_with("proxy.identity.jwt.jwks_min_refetch_seconds: 0")),
            "{bad:?}"
        );
        let settings = load(
            "proxy: { identity: { introspection: { url: \"http://127.0.0.1:3000/api/me\", cookies: [session], user_field: user.id, phone_field: user.phone } } }\n",
            Path::new("."),
        )
        .unwrap();
        let Some(IdentitySettings::Introspection(introspection)) = settings.proxy.identity else {
            panic!("introspection expected")
        };
        assert_eq!(introspection.user_field, ["user", "id"]);
        assert_eq!(introspection.cache_ttl, Duration::from_secs(30));
        let bad = problems(
            "proxy: { identity: { introspection: { url: \"nope\", method: DELETE, cookies: [\"a b\"], user_field: \"user..id\", cache_entries: 0 } } }\n",
        );
        for path in [
            "proxy.identity.introspection.url: 'nope'",
            "proxy.identity.introspection.method: 'DELETE'",
            "proxy.identity.introspection.cookies[0]: 'a b'",
            "proxy.identity.introspection.user_field: 'user..id'",
            "proxy.identity.introspection.cache_entries: 0",
        ] {
            assert!(bad.iter().any(|p| p.starts_with(path)), "{path}: {bad:?}");
        }
        let empty = problems("proxy: { identity: { introspection: { url: \"http://a/me\" } } }\n");
        assert!(
            empty
                .iter()
                .any(|p| p.starts_with("proxy.identity.introspection.cookies: empty")),
            "{empty:?}"
        );
    }

    #[test]
    fn limits_and_networks_are_checked() {
        let found = problems(
            "proxy: { max_held_body_bytes: 0, trusted_proxies: [\"10.0.0.0/8\", \"nope\"], login_url: \"ftp://x\" }\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("proxy.max_held_body_bytes: 0 is out of range")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("proxy.trusted_proxies[1]: 'nope'")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("proxy.login_url: 'ftp://x'")),
            "{found:?}"
        );
    }
}
