//! API client authentication: HTTP Basic or form `client_id`/`client_secret`, secrets compared in
//! constant time (as fixed-length digests, so not even the length leaks), then the client's API
//! scopes and allowed networks. Every failure is the same `invalid_client` answer.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::http::{HeaderMap, header};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::settings::{ApiClient, ApiScope};

/// The credentials a request presented, from the Basic header or, failing that, the form.
fn presented(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        return Some((id.to_owned(), secret.to_owned()));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

/// The fields of a form-encoded body, lenient like the reference: unknown fields kept, the last
/// of a repeated field wins, empty values count as absent. `None` when the body is not a form.
pub fn form_fields(body: &[u8]) -> Option<HashMap<String, String>> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    Some(
        pairs
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .collect(),
    )
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The authenticated client, allowed to call `scope` from `peer`.
pub fn authenticate<'a>(
    clients: &'a [ApiClient],
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    peer: IpAddr,
    scope: ApiScope,
) -> Result<&'a ApiClient, ApiError> {
    let (id, secret) = presented(headers, form).ok_or(ApiError::InvalidClient("no credentials"))?;
    let candidate = digest(&secret);
    let client = clients.iter().find(|client| client.client_id == id);
    // Compare against something even for an unknown id, so timing does not tell ids apart.
    let expected = client.map_or([0u8; 32], |client| digest(&client.client_secret));
    let secret_ok: bool = candidate.ct_eq(&expected).into();
    let client = client
        .filter(|_| secret_ok)
        .ok_or(ApiError::InvalidClient("unknown client or wrong secret"))?;
    if !client.apis.contains(&scope) {
        return Err(ApiError::InvalidClient("client not allowed for this API"));
    }
    let peer = crate::domain::address::unmapped(peer);
    if !client.allowed_networks.is_empty()
        && !client
            .allowed_networks
            .iter()
            .any(|net| net.contains(&peer))
    {
        return Err(ApiError::InvalidClient(
            "client calling from a network it is not allowed",
        ));
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn clients() -> Vec<ApiClient> {
        vec![ApiClient {
            client_id: "portal".into(),
            client_secret: "portal-secret-0123456789".into(),
            apis: vec![ApiScope::MobileAuthentication],
            allowed_networks: vec!["10.0.0.0/8".parse().unwrap()],
        }]
    }

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).unwrap(),
        );
        headers
    }

    const INSIDE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn basic_and_form_credentials_are_accepted() {
        let clients = clients();
        let scope = ApiScope::MobileAuthentication;
        assert!(
            authenticate(
                &clients,
                &basic("portal", "portal-secret-0123456789"),
                &HashMap::new(),
                INSIDE,
                scope
            )
            .is_ok()
        );
        let form = HashMap::from([
            ("client_id".to_owned(), "portal".to_owned()),
            (
                "client_secret".to_owned(),
                "portal-secret-0123456789".to_owned(),
            ),
        ]);
        assert!(authenticate(&clients, &HeaderMap::new(), &form, INSIDE, scope).is_ok());
    }

    #[test]
    fn every_failure_is_invalid_client() {
        let clients = clients();
        let none = HashMap::new();
        let cases = [
            authenticate(
                &clients,
                &HeaderMap::new(),
                &none,
                INSIDE,
                ApiScope::MobileAuthentication,
            ),
            authenticate(
                &clients,
                &basic("portal", "wrong"),
                &none,
                INSIDE,
                ApiScope::MobileAuthentication,
            ),
            authenticate(
                &clients,
                &basic("nobody", "portal-secret-0123456789"),
                &none,
                INSIDE,
                ApiScope::MobileAuthentication,
            ),
            authenticate(
                &clients,
                &basic("portal", "portal-secret-0123456789"),
                &none,
                INSIDE,
                ApiScope::EndUser,
            ),
            authenticate(
                &clients,
                &basic("portal", "portal-secret-0123456789"),
                &none,
                "192.168.1.1".parse().unwrap(),
                ApiScope::MobileAuthentication,
            ),
        ];
        for result in cases {
            assert!(matches!(result, Err(ApiError::InvalidClient(_))));
        }
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let mapped: IpAddr = "::ffff:10.9.9.9".parse().unwrap();
        let clients = clients();
        let headers = basic("portal", "portal-secret-0123456789");
        assert!(
            authenticate(
                &clients,
                &headers,
                &HashMap::new(),
                mapped,
                ApiScope::MobileAuthentication
            )
            .is_ok()
        );
    }
}
