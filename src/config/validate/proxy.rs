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
        other => {
            problems.add(
                "proxy.identity.jwt.algorithm",
                format!("'{other}' is not supported (expected HS256, RS256 or ES256)"),
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
    validation.set_required_spec_claims(&["exp"]);
    if let Some(issuer) = &raw.issuer {
        validation.set_issuer(&[issuer]);
    }
    match &raw.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
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
