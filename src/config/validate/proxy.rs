//! Compiles the `proxy:` section: the upstream (resolved once, here, so the request path never
//! does DNS and never panics on a failed lookup), trusted proxies, identity (JWT keys read and
//! parsed here) and limits.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use url::Url;

use super::{Problems, parse_network, valid_header_name};
use crate::config::schema;
use crate::config::settings::{IdentitySettings, JwtSettings, ProxySettings, UpstreamSettings};
use crate::domain::canonical::RouterModel;

/// Bounds `max_held_body_bytes`: the held body travels through the store.
const MAX_HELD_BODY_BYTES: u64 = 64 * 1024 * 1024;

pub(super) fn compile(
    raw: &schema::Proxy,
    base: &Path,
    problems: &mut Problems,
) -> Option<ProxySettings> {
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
        .map(|identity| self::identity(identity, base, problems));
    if let Some(identity) = &raw.identity
        && identity.header.is_some()
        && raw.trusted_proxies.is_empty()
        && !identity.allow_untrusted_headers
    {
        problems.add(
            "proxy.identity.header",
            "identity headers need proxy.trusted_proxies (the layer that sets them; any other client's copies are ignored and removed), or allow_untrusted_headers: true for a demo",
        );
    }
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
    Some(ProxySettings {
        upstream,
        max_held_body_bytes: usize::try_from(held).unwrap_or(usize::MAX),
        trusted_proxies,
        identity,
        login_url,
        reload_interval,
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
    problems: &mut Problems,
) -> Option<IdentitySettings> {
    match (&raw.header, &raw.jwt) {
        (Some(header), None) => {
            let user = header_name("proxy.identity.header", header, problems);
            let phone = raw
                .phone_header
                .as_ref()
                .map(|phone| header_name("proxy.identity.phone_header", phone, problems));
            Some(IdentitySettings::Header {
                user: user?,
                phone: match phone {
                    Some(phone) => Some(phone?),
                    None => None,
                },
            })
        }
        (None, Some(jwt)) => {
            if raw.phone_header.is_some() {
                problems.add(
                    "proxy.identity.phone_header",
                    "only with identity.header (expected jwt.phone_claim with jwt)",
                );
            }
            self::jwt(jwt, base, problems).map(|jwt| IdentitySettings::Jwt(Box::new(jwt)))
        }
        (Some(_), Some(_)) => {
            problems.add(
                "proxy.identity",
                "both header and jwt are set (expected exactly one)",
            );
            None
        }
        (None, None) => {
            problems.add(
                "proxy.identity",
                "neither header nor jwt is set (expected exactly one)",
            );
            None
        }
    }
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
    ];
    if sources.iter().filter(|set| **set).count() != 1 {
        problems.add(
            "proxy.identity.jwt",
            "expected exactly one of secret (HS256), public_key_file or jwks_file (RS256, ES256)",
        );
        return None;
    }
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
                "only for HS256 (expected public_key_file or jwks_file for RS256 and ES256)",
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
            let mut keys = Vec::new();
            for (i, jwk) in set.keys.iter().enumerate() {
                match DecodingKey::from_jwk(jwk) {
                    Ok(key) => keys.push((jwk.common.key_id.clone(), key)),
                    Err(error) => problems.add(
                        "proxy.identity.jwt.jwks_file",
                        format!("{file}: key {i} cannot be used: {error}"),
                    ),
                }
            }
            if keys.is_empty() {
                problems.add(
                    "proxy.identity.jwt.jwks_file",
                    format!("{file} holds no usable key (expected at least one)"),
                );
                return None;
            }
            keys
        }
        (_, None, None, None) => return None,
    };
    if raw.user_claim.trim().is_empty() {
        problems.add(
            "proxy.identity.jwt.user_claim",
            "empty (expected a claim name such as sub)",
        );
    }
    if let Some(cookie) = &raw.cookie {
        if cookie.trim().is_empty()
            || !cookie
                .chars()
                .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c))
        {
            problems.add(
                "proxy.identity.jwt.cookie",
                format!("'{cookie}' is not a cookie name"),
            );
        }
    }
    let mut validation = Validation::new(algorithm);
    validation.leeway = 30;
    validation.validate_nbf = true;
    // A configured issuer or audience must be present, not only right when present.
    let mut required = vec!["exp"];
    if let Some(issuer) = &raw.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &raw.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    Some(JwtSettings {
        cookie: raw.cookie.as_ref().map(|c| c.trim().to_owned()),
        keys,
        validation,
        user_claim: raw.user_claim.trim().to_owned(),
        phone_claim: raw.phone_claim.as_ref().map(|c| c.trim().to_owned()),
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
        let untrusted = format!("{policy}proxy: {{ identity: {{ header: X-User-Id }} }}\n");
        let found = problems(&untrusted);
        assert!(
            found.iter().any(|p| p
                .starts_with("proxy.identity.header: identity headers need proxy.trusted_proxies")),
            "{found:?}"
        );
        let trusted = format!(
            "{policy}proxy: {{ trusted_proxies: [\"10.0.0.0/8\"], identity: {{ header: X-User-Id }} }}\n"
        );
        assert!(problems(&trusted).is_empty());
        let demo = format!(
            "{policy}proxy: {{ identity: {{ header: X-User-Id, allow_untrusted_headers: true }} }}\n"
        );
        assert!(problems(&demo).is_empty());
    }

    #[test]
    fn a_configured_issuer_and_audience_must_be_present() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, decode, encode};
        let settings = load(
            "proxy: { identity: { jwt: { algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\", issuer: idp, audience: bank } } }\n",
            Path::new("."),
        )
        .unwrap();
        let Some(IdentitySettings::Jwt(jwt)) = settings.proxy.identity else {
            panic!("jwt expected")
        };
        assert_eq!(jwt.phone_claim.as_deref(), Some("phone_number"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let sign = |claims: serde_json::Value| {
            encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let check = |token: &str| {
            decode::<serde_json::Value>(token, &jwt.keys[0].1, &jwt.validation).is_ok()
        };
        let exp = now + 600;
        assert!(check(&sign(
            serde_json::json!({"sub": "a", "exp": exp, "iss": "idp", "aud": "bank"})
        )));
        for bad in [
            serde_json::json!({"sub": "a", "exp": exp, "aud": "bank"}),
            serde_json::json!({"sub": "a", "exp": exp, "iss": "idp"}),
            serde_json::json!({"sub": "a", "exp": exp, "iss": "other", "aud": "bank"}),
            serde_json::json!({"sub": "a", "exp": exp, "iss": "idp", "aud": "shop"}),
            serde_json::json!({"sub": "a", "exp": exp, "iss": "idp", "aud": "bank", "nbf": now + 600}),
            serde_json::json!({"sub": "a", "iss": "idp", "aud": "bank"}),
        ] {
            assert!(!check(&sign(bad.clone())), "{bad}");
        }
    }

    #[test]
    fn identity_must_be_one_well_formed_source() {
        let both = problems(
            "proxy: { identity: { header: X-User, jwt: { algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\" } } }\n",
        );
        assert!(
            both.iter().any(|p| p.contains("both header and jwt")),
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
        let header = problems("proxy: { identity: { header: \"bad header\" } }\n");
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
