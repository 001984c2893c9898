//! Requests held while their step-up is pending: the original request (method, URI, headers,
//! body) and the ticket that says whose it is, which policy demanded it, how it is presented
//! (challenge or hold) and which client may complete it (the binding digest). A held request is
//! taken out of the store exactly once, by whoever forwards it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::clock::Timestamp;
use super::policy::Mode;

/// The SHA-256 of the binding token handed to the client that started the step-up (a cookie for
/// browsers, a header for API clients). Only the digest is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BindingDigest([u8; 32]);

impl BindingDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time: the token is a bearer secret.
    pub fn matches(&self, token: &str) -> bool {
        bool::from(self.0.ct_eq(&Self::of(token).0))
    }
}

impl std::fmt::Debug for BindingDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindingDigest(..)")
    }
}

impl Serialize for BindingDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for BindingDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("binding digest is not 32 bytes"))?;
        Ok(Self(bytes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldMode {
    Challenge,
    Hold,
}

impl From<Mode> for HeldMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Challenge => HeldMode::Challenge,
            Mode::Hold => HeldMode::Hold,
        }
    }
}

/// Who may complete a held request and what its approval grants. Small: read on every status
/// poll and verify, without the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTicket {
    pub policy: String,
    pub user_id: String,
    pub mode: HeldMode,
    /// Seconds the grant issued on approval stays valid; 0 issues none.
    pub freshness_seconds: u64,
    pub binding: BindingDigest,
    pub held_at: Timestamp,
    /// The policy's message as shown on the page (placeholders filled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Dynamic linking: the digest of the request parts the policy binds
    /// (`policy::binding_digest`); grants from this approval carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<String>,
}

/// The original request, byte for byte as far as forwarding needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalRequest {
    pub method: String,
    /// Path and query as the client sent them.
    pub uri: String,
    /// In the order received; values are bytes (headers need not be UTF-8).
    #[serde(with = "header_list")]
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRequest {
    pub ticket: HeldTicket,
    pub request: OriginalRequest,
}

mod header_list {
    use super::*;

    pub fn serialize<S: Serializer>(
        headers: &[(String, Vec<u8>)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let encoded: Vec<(&str, String)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), STANDARD.encode(value)))
            .collect();
        encoded.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        let encoded = Vec::<(String, String)>::deserialize(deserializer)?;
        encoded
            .into_iter()
            .map(|(name, value)| {
                STANDARD
                    .decode(value)
                    .map(|bytes| (name, bytes))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_matches_only_its_token() {
        let digest = BindingDigest::of("token-a");
        assert!(digest.matches("token-a"));
        assert!(!digest.matches("token-b"));
        assert!(!digest.matches(""));
    }

    #[test]
    fn request_head_round_trips_with_binary_header_values() {
        let request = OriginalRequest {
            method: "POST".into(),
            uri: "/transfer?x=1".into(),
            headers: vec![("x-raw".into(), vec![0xff, 0x00, b'a'])],
            body: Vec::new(),
        };
        let json = serde_json::to_string(&request).unwrap();
        let back: OriginalRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn ticket_round_trips_without_exposing_the_digest_bytes_in_debug() {
        let ticket = HeldTicket {
            bound: None,
            policy: "transfers".into(),
            user_id: "u1".into(),
            mode: HeldMode::Hold,
            freshness_seconds: 300,
            binding: BindingDigest::of("t"),
            held_at: Timestamp(5),
            message: Some("Approve".into()),
        };
        let json = serde_json::to_string(&ticket).unwrap();
        assert_eq!(serde_json::from_str::<HeldTicket>(&json).unwrap(), ticket);
        assert!(!format!("{ticket:?}").contains(&hex::encode(Sha256::digest(b"t"))));
    }
}
