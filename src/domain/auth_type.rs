//! Auth types: the named, operator-configured recipes (method, lifetime, limits, fallback,
//! default messages) that every transaction is started from.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How the user proves presence: one of the mobile authentication methods of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Push,
    PushWithPin,
    PushWithFingerprint,
    PushWithCustomAuthenticator,
    Otp,
    Sms,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Push,
        Method::PushWithPin,
        Method::PushWithFingerprint,
        Method::PushWithCustomAuthenticator,
        Method::Otp,
        Method::Sms,
    ];

    /// The lower-case spelling used in config and in the API's `auth_method` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Push => "push",
            Method::PushWithPin => "push_with_pin",
            Method::PushWithFingerprint => "push_with_fingerprint",
            Method::PushWithCustomAuthenticator => "push_with_custom_authenticator",
            Method::Otp => "otp",
            Method::Sms => "sms",
        }
    }

    pub fn is_push(self) -> bool {
        matches!(
            self,
            Method::Push
                | Method::PushWithPin
                | Method::PushWithFingerprint
                | Method::PushWithCustomAuthenticator
        )
    }

    /// Whether a type of this method may name a fallback type (the spec forbids it for OTP).
    pub fn allows_fallback(self) -> bool {
        self != Method::Otp
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown method '{0}'")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMethod(s.to_owned()))
    }
}

/// The placeholder an SMS template must contain where the code goes.
pub const CODE_PLACEHOLDER: &str = "{code}";

/// The language whose default message is used when the requested one has none.
pub const FALLBACK_LANGUAGE: &str = "en";

/// A checked, immutable auth type. Built by the config compiler; never from raw YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthType {
    pub name: String,
    pub method: Method,
    /// The whole lifetime of a transaction: every attempt must happen within it.
    pub ttl: Duration,
    /// Wrong codes allowed before the transaction is invalidated; 0 means unlimited until expiry.
    pub max_attempts: u32,
    /// Resends allowed per transaction; 0 means resend is disabled.
    pub max_resends: u32,
    pub sender_id: Option<String>,
    pub fallback: Option<String>,
    /// Message templates keyed by lower-case language code.
    pub default_messages: BTreeMap<String, String>,
    pub transaction_signing: bool,
    /// Push: the requester sees a two-digit number the user must type (or pick) on the phone.
    pub number_matching: NumberMatching,
}

/// Number matching (push types): the requester is shown a two-digit number, and the phone's
/// approval must carry it; a wrong number fails the transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberMatching {
    #[default]
    Off,
    /// The phone offers three numbers and the user picks one.
    Pick,
    /// The user types the number (NIST SP 800-63B-4 and Microsoft's "type the number": a
    /// choice of three can be guessed one time in three).
    Type,
}

impl NumberMatching {
    pub fn is_on(self) -> bool {
        self != NumberMatching::Off
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NumberMatching::Off => "off",
            NumberMatching::Pick => "pick",
            NumberMatching::Type => "type",
        }
    }
}

impl AuthType {
    /// The default message for `language`, falling back to English as the spec prescribes.
    pub fn default_message(&self, language: Option<&str>) -> Option<&str> {
        language
            .and_then(|lang| self.default_messages.get(&lang.to_ascii_lowercase()))
            .or_else(|| self.default_messages.get(FALLBACK_LANGUAGE))
            .map(String::as_str)
    }
}

/// Why a set of auth types cannot be used together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthTypeError {
    #[error("duplicate auth type name '{0}'")]
    Duplicate(String),
    #[error("auth type '{from}' falls back to unknown type '{to}'")]
    UnknownFallback { from: String, to: String },
    #[error("auth type '{0}' uses method otp, which cannot have a fallback")]
    FallbackOnOtp(String),
    #[error("fallback cycle: {}", .0.join(" -> "))]
    FallbackCycle(Vec<String>),
}

/// All configured auth types, checked as a whole: unique names, known fallbacks, no cycles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthTypes {
    by_name: BTreeMap<String, AuthType>,
}

impl AuthTypes {
    /// Checks the set and reports every problem, not just the first.
    pub fn new(types: Vec<AuthType>) -> Result<Self, Vec<AuthTypeError>> {
        let mut errors = Vec::new();
        let mut by_name = BTreeMap::new();
        for auth_type in types {
            if by_name.contains_key(&auth_type.name) {
                errors.push(AuthTypeError::Duplicate(auth_type.name.clone()));
                continue;
            }
            by_name.insert(auth_type.name.clone(), auth_type);
        }
        for auth_type in by_name.values() {
            let Some(fallback) = &auth_type.fallback else {
                continue;
            };
            if !auth_type.method.allows_fallback() {
                errors.push(AuthTypeError::FallbackOnOtp(auth_type.name.clone()));
            } else if !by_name.contains_key(fallback) {
                errors.push(AuthTypeError::UnknownFallback {
                    from: auth_type.name.clone(),
                    to: fallback.clone(),
                });
            }
        }
        errors.extend(find_cycles(&by_name));
        if errors.is_empty() {
            Ok(Self { by_name })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&AuthType> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AuthType> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The type itself followed by its fallbacks, in the order they are tried.
    pub fn fallback_chain(&self, name: &str) -> Vec<&AuthType> {
        let mut chain: Vec<&AuthType> = Vec::new();
        let mut next = self.by_name.get(name);
        while let Some(auth_type) = next {
            // A checked set has no cycles; the guard keeps an unchecked one from looping forever.
            if chain.iter().any(|seen| seen.name == auth_type.name) {
                break;
            }
            chain.push(auth_type);
            next = auth_type
                .fallback
                .as_ref()
                .and_then(|f| self.by_name.get(f));
        }
        chain
    }
}

/// Each cycle once, reported from its alphabetically first member so the message is stable.
fn find_cycles(by_name: &BTreeMap<String, AuthType>) -> Vec<AuthTypeError> {
    let mut reported: Vec<Vec<String>> = Vec::new();
    for start in by_name.keys() {
        let mut path = vec![start.clone()];
        let mut current = start;
        while let Some(next) = by_name.get(current).and_then(|t| t.fallback.as_ref()) {
            if !by_name.contains_key(next) {
                break;
            }
            if let Some(pos) = path.iter().position(|n| n == next) {
                let mut cycle: Vec<String> = path[pos..].to_vec();
                let min = cycle
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                cycle.rotate_left(min);
                if !reported.contains(&cycle) {
                    reported.push(cycle);
                }
                break;
            }
            path.push(next.clone());
            current = next;
        }
    }
    reported
        .into_iter()
        .map(|mut cycle| {
            let first = cycle[0].clone();
            cycle.push(first);
            AuthTypeError::FallbackCycle(cycle)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sms(name: &str) -> AuthType {
        AuthType {
            name: name.into(),
            method: Method::Sms,
            ttl: Duration::from_secs(300),
            max_attempts: 3,
            max_resends: 2,
            sender_id: None,
            fallback: None,
            default_messages: BTreeMap::from([
                ("en".into(), "Your code: {code}".into()),
                ("nl".into(), "Uw code: {code}".into()),
            ]),
            transaction_signing: false,
            number_matching: crate::domain::auth_type::NumberMatching::Off,
        }
    }

    fn with_fallback(mut t: AuthType, method: Method, fallback: &str) -> AuthType {
        t.method = method;
        t.fallback = Some(fallback.into());
        t
    }

    #[test]
    fn method_round_trips_through_its_spelling() {
        for method in Method::ALL {
            assert_eq!(method.as_str().parse::<Method>(), Ok(method));
        }
        assert!("sms_code".parse::<Method>().is_err());
    }

    #[test]
    fn default_message_falls_back_to_english() {
        let t = sms("s");
        assert_eq!(t.default_message(Some("nl")), Some("Uw code: {code}"));
        assert_eq!(t.default_message(Some("NL")), Some("Uw code: {code}"));
        assert_eq!(t.default_message(Some("fr")), Some("Your code: {code}"));
        assert_eq!(t.default_message(None), Some("Your code: {code}"));
    }

    #[test]
    fn every_problem_in_a_set_is_reported() {
        let errors = AuthTypes::new(vec![
            sms("dup"),
            sms("dup"),
            with_fallback(sms("push"), Method::Push, "nowhere"),
            with_fallback(sms("qr"), Method::Otp, "dup"),
            with_fallback(sms("a"), Method::Push, "b"),
            with_fallback(sms("b"), Method::Push, "a"),
        ])
        .unwrap_err();
        assert!(errors.contains(&AuthTypeError::Duplicate("dup".into())));
        assert!(errors.contains(&AuthTypeError::UnknownFallback {
            from: "push".into(),
            to: "nowhere".into()
        }));
        assert!(errors.contains(&AuthTypeError::FallbackOnOtp("qr".into())));
        assert!(errors.contains(&AuthTypeError::FallbackCycle(vec![
            "a".into(),
            "b".into(),
            "a".into()
        ])));
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn self_fallback_is_a_cycle() {
        let errors = AuthTypes::new(vec![with_fallback(sms("s"), Method::Push, "s")]).unwrap_err();
        assert_eq!(
            errors,
            vec![AuthTypeError::FallbackCycle(vec!["s".into(), "s".into()])]
        );
    }

    #[test]
    fn fallback_chain_lists_the_type_then_its_fallbacks() {
        let types = AuthTypes::new(vec![
            with_fallback(sms("pin"), Method::PushWithPin, "push"),
            with_fallback(sms("push"), Method::Push, "sms"),
            sms("sms"),
        ])
        .unwrap();
        let names: Vec<&str> = types
            .fallback_chain("pin")
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["pin", "push", "sms"]);
        assert!(types.fallback_chain("missing").is_empty());
    }
}
