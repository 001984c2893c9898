//! One-time codes and the secrets around them: six-digit codes drawn uniformly from the OS CSPRNG,
//! HMAC-SHA256 hashes bound to the transaction (only the hash is ever stored), constant-time
//! comparison, and purpose-separated keys derived from the operator's secret key.

use std::fmt;

use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::transaction::TransactionId;

type HmacSha256 = Hmac<Sha256>;

/// Number of decimal digits in an SMS code.
pub const CODE_DIGITS: usize = 6;
const CODE_SPACE: u32 = 1_000_000;
/// The largest multiple of `CODE_SPACE` that fits in a u32; draws at or above it are rejected so
/// that every code is equally likely (no modulo bias).
const UNBIASED_LIMIT: u32 = (u32::MAX / CODE_SPACE) * CODE_SPACE;

/// A plaintext one-time code. It exists only between generation and delivery; it never reaches
/// the store, a log or a metric, so `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeCode(String);

impl OneTimeCode {
    /// Draws a six-digit code uniformly at random. Pass `rand_core::OsRng` in production.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        loop {
            let draw = rng.next_u32();
            if draw < UNBIASED_LIMIT {
                return Self(format!(
                    "{:0width$}",
                    draw % CODE_SPACE,
                    width = CODE_DIGITS
                ));
            }
        }
    }

    /// Accepts what a user typed: exactly six ASCII digits after trimming surrounding spaces.
    pub fn parse(input: &str) -> Option<Self> {
        let trimmed = input.trim();
        (trimmed.len() == CODE_DIGITS && trimmed.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Self(trimmed.to_owned()))
    }

    /// The digits, for the one place that must see them: the message sent to the user.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeCode(******)")
    }
}

/// The operator's `secret_key`. Never used directly: each purpose derives its own key, so a
/// grant signature can never be replayed as a code hash or the other way round.
#[derive(Clone)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// The minimum accepted length, in bytes.
    pub const MIN_LEN: usize = 32;

    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(b"stepgate/derive/v1/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({} bytes)", self.0.len())
    }
}

/// HMAC-SHA256 of a code, bound to its transaction: the same digits in another transaction hash
/// differently, so a stored hash is useless anywhere else.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CodeHash([u8; 32]);

impl CodeHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Constant-time equality: the time taken says nothing about how many bytes matched.
    pub fn matches(&self, other: &CodeHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for CodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeHash(..)")
    }
}

/// Hashes codes with a key derived from the secret key.
#[derive(Clone)]
pub struct CodeHasher {
    key: [u8; 32],
}

impl CodeHasher {
    pub fn new(secret: &SecretKey) -> Self {
        Self {
            key: secret.derive("code-hash"),
        }
    }

    pub fn hash(&self, transaction: &TransactionId, code: &OneTimeCode) -> CodeHash {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(transaction.to_string().as_bytes());
        mac.update(b":");
        mac.update(code.0.as_bytes());
        CodeHash(mac.finalize().into_bytes().into())
    }

    /// Hashes whatever a user typed (trimmed), so input that is not a valid code still counts as
    /// an attempt and can never match.
    pub fn hash_input(&self, transaction: &TransactionId, typed: &str) -> CodeHash {
        self.hash(transaction, &OneTimeCode(typed.trim().to_owned()))
    }
}

impl fmt::Debug for CodeHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeHasher(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    /// Replays fixed draws, to exercise the rejection branch deterministically.
    struct Scripted(Vec<u32>);
    impl RngCore for Scripted {
        fn next_u32(&mut self) -> u32 {
            self.0.remove(0)
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u32() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for Scripted {}

    #[test]
    fn codes_are_six_digits_with_leading_zeros() {
        assert_eq!(
            OneTimeCode::generate(&mut Scripted(vec![42])).expose(),
            "000042"
        );
        for _ in 0..1000 {
            let code = OneTimeCode::generate(&mut OsRng);
            assert!(
                OneTimeCode::parse(code.expose()).is_some(),
                "{}",
                code.expose()
            );
        }
    }

    #[test]
    fn draws_in_the_biased_tail_are_rejected() {
        let mut rng = Scripted(vec![UNBIASED_LIMIT, u32::MAX, UNBIASED_LIMIT - 1]);
        let code = OneTimeCode::generate(&mut rng);
        assert_eq!(
            code.expose(),
            format!("{:06}", (UNBIASED_LIMIT - 1) % CODE_SPACE)
        );
        assert!(rng.0.is_empty(), "both tail draws must have been skipped");
    }

    #[test]
    fn leading_digit_is_roughly_uniform() {
        let mut counts = [0u32; 10];
        let samples = 50_000;
        for _ in 0..samples {
            let code = OneTimeCode::generate(&mut OsRng);
            counts[usize::from(code.expose().as_bytes()[0] - b'0')] += 1;
        }
        // Expected 5000 per digit; 5 sigma is about 335, so this fails only when biased.
        for (digit, count) in counts.iter().enumerate() {
            assert!((4_600..=5_400).contains(count), "digit {digit}: {count}");
        }
    }

    #[test]
    fn parse_accepts_only_six_digits() {
        assert!(OneTimeCode::parse(" 123456 ").is_some());
        for bad in ["12345", "1234567", "12345a", "", "１２３４５６"] {
            assert!(OneTimeCode::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn hashes_are_bound_to_transaction_and_key() {
        let code = OneTimeCode::parse("123456").unwrap();
        let (a, b) = (TransactionId::random(), TransactionId::random());
        let hasher = CodeHasher::new(&SecretKey::new(vec![7u8; 32]));
        let other_key = CodeHasher::new(&SecretKey::new(vec![8u8; 32]));
        assert!(hasher.hash(&a, &code).matches(&hasher.hash(&a, &code)));
        assert!(!hasher.hash(&a, &code).matches(&hasher.hash(&b, &code)));
        assert!(!hasher.hash(&a, &code).matches(&other_key.hash(&a, &code)));
        let hex = hasher.hash(&a, &code).to_hex();
        assert_eq!(hex.len(), 64);
        assert!(
            CodeHash::from_hex(&hex)
                .unwrap()
                .matches(&hasher.hash(&a, &code))
        );
    }

    #[test]
    fn derived_keys_differ_per_purpose_and_debug_hides_secrets() {
        let key = SecretKey::new(b"0123456789abcdef0123456789abcdef".to_vec());
        assert_ne!(key.derive("code-hash"), key.derive("grant"));
        assert_eq!(format!("{key:?}"), "SecretKey(32 bytes)");
        let code = OneTimeCode::parse("987654").unwrap();
        assert!(!format!("{code:?}").contains("987654"));
    }
}
