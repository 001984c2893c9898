//! Grants: what a client carries after an approval, so the next requests to the same policy pass
//! without a new step-up while the approval is fresh. A grant is a token signed (HMAC-SHA256)
//! with a key derived from the secret key, bound to the user, the policy and an expiry; checking
//! one needs no store. A client may carry several (one per policy), joined with `~`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::clock::Timestamp;
use super::code::SecretKey;

const VERSION: &str = "g1";
/// Separates grants in one cookie or header value; outside the base64url alphabet and `.`.
pub const SEPARATOR: char = '~';
/// A client keeps at most this many grants (newest first); older ones drop off.
pub const MAX_GRANTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "p")]
    pub policy: String,
    #[serde(rename = "e")]
    pub expires_at: Timestamp,
    /// The approval the grant came from, for the step-up assertion: its transaction, the
    /// method that approved (`Method::as_str`) and when.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<Timestamp>,
    /// Dynamic linking: the digest of the request parts the approval was bound to; the grant
    /// admits only requests with the same digest (`policy::binding_digest`).
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<String>,
}

/// Signs and checks grants. Cheap to clone.
#[derive(Clone)]
pub struct GrantKey {
    /// HMAC already keyed: granted requests check a grant each, and keying costs two of the
    /// hash's block compressions, as much as the check itself.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantKey(..)")
    }
}

impl GrantKey {
    pub fn new(secret: &SecretKey) -> Self {
        let key = secret.derive("grant");
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
        Self { keyed }
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.keyed.clone()
    }

    pub fn issue(&self, grant: &Grant) -> String {
        // Serializing three plain fields cannot fail.
        let payload = serde_json::to_vec(grant).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let mut mac = self.mac();
        mac.update(VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{VERSION}.{payload}.{signature}")
    }

    /// The grant in `token` if its signature is ours (checked in constant time). Expiry, user
    /// and policy are the caller's to check (`Grant::admits`).
    pub fn open(&self, token: &str) -> Option<Grant> {
        let mut parts = token.split('.');
        let (version, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION || parts.next().is_some() {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.mac();
        mac.update(VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// Whether any grant in `list` (tokens joined with `~`) admits `user_id` to `policy` at `now`.
    pub fn admits(&self, list: &str, user_id: &str, policy: &str, now: Timestamp) -> bool {
        self.admitting(list, user_id, policy, None, now).is_some()
    }

    /// The grant of `list` that admits `user_id` to `policy` at `now`, if one does. `bound`:
    /// the request's binding digest when the policy binds (the grant must carry the same), or
    /// `None` (the grant must carry none).
    pub fn admitting(
        &self,
        list: &str,
        user_id: &str,
        policy: &str,
        bound: Option<&str>,
        now: Timestamp,
    ) -> Option<Grant> {
        list.split(SEPARATOR)
            .filter_map(|token| self.open(token.trim()))
            .find(|grant| grant.admits(user_id, policy, now) && grant.bound.as_deref() == bound)
    }

    /// `list` with `new_token` in front, without expired, foreign or same-policy grants, capped
    /// at `MAX_GRANTS`.
    pub fn add_to_list(&self, list: Option<&str>, new_token: &str, now: Timestamp) -> String {
        let new_grant = self.open(new_token);
        let mut kept = vec![new_token.to_owned()];
        for token in list.unwrap_or_default().split(SEPARATOR) {
            let Some(old) = self.open(token.trim()) else {
                continue;
            };
            let superseded = new_grant
                .as_ref()
                .is_some_and(|new| new.policy == old.policy || new.user_id != old.user_id);
            if old.expires_at > now && !superseded && kept.len() < MAX_GRANTS {
                kept.push(token.trim().to_owned());
            }
        }
        kept.join(&SEPARATOR.to_string())
    }
}

impl Grant {
    pub fn admits(&self, user_id: &str, policy: &str, now: Timestamp) -> bool {
        self.user_id == user_id && self.policy == policy && now < self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> GrantKey {
        GrantKey::new(&SecretKey::new(vec![byte; 32]))
    }

    fn grant(policy: &str, expires: u64) -> Grant {
        Grant {
            bound: None,
            user_id: "alice".into(),
            policy: policy.into(),
            expires_at: Timestamp(expires),
            transaction_id: None,
            method: None,
            approved_at: None,
        }
    }

    #[test]
    fn an_issued_grant_opens_and_admits_its_user_and_policy_until_expiry() {
        let key = key(1);
        let token = key.issue(&grant("transfers", 1_000));
        assert_eq!(key.open(&token), Some(grant("transfers", 1_000)));
        assert!(key.admits(&token, "alice", "transfers", Timestamp(999)));
        assert!(!key.admits(&token, "alice", "transfers", Timestamp(1_000)));
        assert!(!key.admits(&token, "bob", "transfers", Timestamp(1)));
        assert!(!key.admits(&token, "alice", "admin", Timestamp(1)));
    }

    #[test]
    fn tampered_or_foreign_grants_do_not_open() {
        let token = key(1).issue(&grant("transfers", 1_000));
        assert_eq!(key(2).open(&token), None);
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"u":"alice","p":"transfers","e":99999}"#);
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_payload;
        assert_eq!(key(1).open(&parts.join(".")), None);
        assert_eq!(key(1).open(&format!("{token}.x")), None);
        assert_eq!(key(1).open(&token.replacen("g1", "g2", 1)), None);
        assert_eq!(key(1).open(""), None);
        assert_eq!(key(1).open("g1.%%%.%%%"), None);
    }

    #[test]
    fn lists_keep_the_newest_grant_per_policy_and_drop_expired_ones() {
        let key = key(1);
        let old_transfer = key.issue(&grant("transfers", 500));
        let admin = key.issue(&grant("admin", 2_000));
        let expired = key.issue(&grant("other", 50));
        let list = [
            old_transfer.as_str(),
            admin.as_str(),
            expired.as_str(),
            "junk",
        ]
        .join("~");
        let new_transfer = key.issue(&grant("transfers", 3_000));
        let updated = key.add_to_list(Some(&list), &new_transfer, Timestamp(100));
        assert_eq!(updated, format!("{new_transfer}~{admin}"));
        assert!(key.admits(&updated, "alice", "admin", Timestamp(100)));
        assert!(key.admits(&updated, "alice", "transfers", Timestamp(2_500)));
    }

    #[test]
    fn lists_are_capped() {
        let key = key(1);
        let mut list = String::new();
        for i in 0..10 {
            let token = key.issue(&grant(&format!("p{i}"), 1_000));
            list = key.add_to_list(Some(&list), &token, Timestamp(0));
        }
        assert_eq!(list.split(SEPARATOR).count(), MAX_GRANTS);
        assert!(key.admits(&list, "alice", "p9", Timestamp(0)));
        assert!(!key.admits(&list, "alice", "p0", Timestamp(0)));
    }
}
