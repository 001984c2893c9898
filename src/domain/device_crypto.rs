//! The cryptography of the device protocol (`docs/device-protocol.md`), for both sides: the
//! server services and the reference phone client (`stepgate device`) call the same functions,
//! so the wire formats cannot drift apart.
//!
//! Owns: P-256 public key encodings (SEC1 uncompressed, SPKI PEM), ECDSA signatures (fixed
//! 64-byte `r || s`, base64url), the canonical strings that get signed (requests, enrollment
//! proofs, answers), the PIN key derivation (argon2id), the server key pair derived from the
//! operator's secret key (HKDF-SHA256), the sealed secure payload (ECDH -> HKDF -> AES-256-GCM)
//! and one-time enrollment codes (Crockford base32, stored only as an HMAC).
//!
//! Pure: imports only the domain (`device`, `code`) and crypto crates. Nothing here logs, and no
//! `Debug` output contains a private key, a PIN or a code.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::code::{CodeHash, SecretKey};
use super::device::{DeviceId, PublicKeyBytes};

type HmacSha256 = Hmac<Sha256>;

/// Length of a SEC1 uncompressed P-256 point: `0x04 || x || y`.
pub const UNCOMPRESSED_POINT_LEN: usize = 65;
/// Length of a signature in its fixed `r || s` form.
pub const SIGNATURE_LEN: usize = 64;
/// Characters in an enrollment code (5 bits each: 100 bits).
pub const ENROLLMENT_CODE_LEN: usize = 20;
/// The first line of every signed request's canonical string.
pub const REQUEST_CONTEXT: &str = "stepgate-device-v1";
/// The first line of an enrollment proof.
pub const ENROLL_CONTEXT: &str = "stepgate-enroll-v1";
/// The first line of an answer statement.
pub const ANSWER_CONTEXT: &str = "stepgate-answer-v1";
/// HKDF info of the shared server key; the per-device key appends ` <device_id>`.
pub const SERVER_KEY_INFO: &str = "stepgate device server key v1";
/// HKDF info of the secure-payload key.
pub const SECURE_MESSAGE_INFO: &str = "stepgate secure message v1";

/// Argon2id cost of the PIN key: 8 MiB, one pass, one lane (the doc's numbers; the phone pays it
/// once per answer, an attacker once per guess).
const PIN_M_COST_KIB: u32 = 8 * 1024;
const PIN_T_COST: u32 = 1;
const PIN_P_COST: u32 = 1;
/// A derived scalar is out of range with probability about 2^-32; past this many re-hashes
/// something else is wrong.
const MAX_SCALAR_ATTEMPTS: u32 = 16;
/// Purpose under which the operator secret yields the HKDF input of the server key.
const SERVER_KEY_PURPOSE: &str = "device server key";
/// Purpose under which the operator secret yields the enrollment-code HMAC key.
const ENROLLMENT_CODE_PURPOSE: &str = "enrollment code";
/// Crockford's base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const GCM_NONCE_LEN: usize = 12;

/// Why a device-protocol crypto step failed. Deliberately coarse: a verifier learns only that
/// the signature did not verify, never which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Not a SEC1 uncompressed P-256 point on the curve.
    #[error("invalid public key")]
    InvalidPublicKey,
    /// Malformed encoding, wrong key, tampered message: one answer for every cause.
    #[error("invalid signature")]
    InvalidSignature,
    /// The argon2id step failed (should not happen with the fixed parameters).
    #[error("PIN key derivation failed")]
    PinDerivation,
    /// Encryption failed (should not happen with a valid key).
    #[error("sealing the payload failed")]
    Seal,
    /// Malformed, tampered, wrong key or wrong transaction: one answer for every cause.
    #[error("opening the sealed payload failed")]
    Open,
}

/// Parses a public key as sent on the wire. Only the uncompressed form is accepted, so every key
/// has exactly one encoding (and what is stored equals what was signed over).
pub fn parse_public_key(bytes: &PublicKeyBytes) -> Result<p256::PublicKey, CryptoError> {
    if bytes.0.len() != UNCOMPRESSED_POINT_LEN || bytes.0.first() != Some(&0x04) {
        return Err(CryptoError::InvalidPublicKey);
    }
    p256::PublicKey::from_sec1_bytes(&bytes.0).map_err(|_| CryptoError::InvalidPublicKey)
}

/// The wire form of a public key: SEC1 uncompressed.
pub fn public_key_bytes(key: &p256::PublicKey) -> PublicKeyBytes {
    PublicKeyBytes(key.to_encoded_point(false).as_bytes().to_vec())
}

/// The wire form of a signing key's public half.
pub fn signing_public_key(key: &SigningKey) -> PublicKeyBytes {
    public_key_bytes(&p256::PublicKey::from(key.verifying_key()))
}

/// The SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of a wire-form key, with LF line endings.
pub fn public_key_pem(key: &PublicKeyBytes) -> Result<String, CryptoError> {
    parse_public_key(key)?
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| CryptoError::InvalidPublicKey)
}

/// Signs `message` (ECDSA P-256, SHA-256, RFC 6979 nonces) and encodes the fixed 64-byte
/// `r || s` form, normalised to low-S, as base64url without padding.
pub fn sign(key: &SigningKey, message: &[u8]) -> String {
    let signature: Signature = key.sign(message);
    // Low-S, so verifiers that insist on it (as many do) accept our signatures too.
    let low_s = signature.normalize_s().unwrap_or(signature);
    URL_SAFE_NO_PAD.encode(low_s.to_bytes())
}

/// Verifies a base64url `r || s` signature over `message`. High-S signatures are normalised
/// first, so both forms of a valid signature verify. Every failure is the same error.
pub fn verify(key: &PublicKeyBytes, message: &[u8], signature: &str) -> Result<(), CryptoError> {
    let verifying_key = parse_public_key(key)
        .map(VerifyingKey::from)
        .map_err(|_| CryptoError::InvalidSignature)?;
    let raw = URL_SAFE_NO_PAD
        .decode(signature.as_bytes())
        .map_err(|_| CryptoError::InvalidSignature)?;
    if raw.len() != SIGNATURE_LEN {
        return Err(CryptoError::InvalidSignature);
    }
    let parsed = Signature::from_slice(&raw).map_err(|_| CryptoError::InvalidSignature)?;
    let low_s = parsed.normalize_s().unwrap_or(parsed);
    verifying_key
        .verify(message, &low_s)
        .map_err(|_| CryptoError::InvalidSignature)
}

/// The string a signed request's signature covers: six lines joined by `\n`, no trailing
/// newline. `method` is upper-cased here; `path_and_query` must be exactly as sent.
pub fn canonical_request(
    method: &str,
    path_and_query: &str,
    timestamp_ms: u64,
    nonce: &str,
    body: &[u8],
) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    format!(
        "{REQUEST_CONTEXT}\n{}\n{path_and_query}\n{timestamp_ms}\n{nonce}\n{body_hash}",
        method.to_ascii_uppercase()
    )
}

/// What the enrollment `proof` signs: proves the app holds the signing key it enrolls.
pub fn enroll_statement(code: &str) -> String {
    format!("{ENROLL_CONTEXT}\n{code}")
}

/// What an `authenticator_signature` signs. `number` is the chosen number with number matching
/// on, `-` otherwise.
pub fn answer_statement(transaction_id: &str, decision: &str, number: Option<u8>) -> String {
    let number = number.map_or_else(|| "-".to_owned(), |n| n.to_string());
    format!("{ANSWER_CONTEXT}\n{transaction_id}\n{decision}\n{number}")
}

/// Derives the PIN key: `argon2id(pin, salt)` (m = 8 MiB, t = 1, p = 1, 32 bytes) read as a
/// P-256 scalar; when that is zero or not below the group order, the output is hashed again as
/// the new input (same salt) until it is a valid scalar.
pub fn derive_pin_key(pin: &str, salt: &[u8; 16]) -> Result<SigningKey, CryptoError> {
    let params = argon2::Params::new(PIN_M_COST_KIB, PIN_T_COST, PIN_P_COST, Some(32))
        .map_err(|_| CryptoError::PinDerivation)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut input = pin.as_bytes().to_vec();
    for _ in 0..MAX_SCALAR_ATTEMPTS {
        let mut output = [0u8; 32];
        argon
            .hash_password_into(&input, salt, &mut output)
            .map_err(|_| CryptoError::PinDerivation)?;
        if let Ok(key) = SigningKey::from_bytes(&output.into()) {
            return Ok(key);
        }
        input = output.to_vec();
    }
    Err(CryptoError::PinDerivation)
}

/// The server's private key: HKDF-SHA256 over the operator secret (its `device server key`
/// derivation as input key material, no salt), info `stepgate device server key v1` for the key
/// shared by all devices or `stepgate device server key v1 <device_id>` per device. Nothing is
/// stored: the same secret always gives the same key.
pub fn server_secret(secret: &SecretKey, device: Option<&DeviceId>) -> p256::SecretKey {
    let info = match device {
        Some(id) => format!("{SERVER_KEY_INFO} {id}"),
        None => SERVER_KEY_INFO.to_owned(),
    };
    let ikm = secret.derive(SERVER_KEY_PURPOSE);
    let hkdf = Hkdf::<Sha256>::new(None, &ikm);
    // An output that is not a valid scalar (probability about 2^-32) is expanded again with a
    // counter appended to the info; the first candidate uses the doc's info string unchanged.
    let mut attempt: u32 = 0;
    loop {
        let mut okm = [0u8; 32];
        let candidate_info = if attempt == 0 {
            info.clone()
        } else {
            format!("{info} #{attempt}")
        };
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        let expanded = hkdf.expand(candidate_info.as_bytes(), &mut okm).is_ok();
        if expanded && let Ok(key) = p256::SecretKey::from_bytes(&okm.into()) {
            return key;
        }
        attempt = attempt.wrapping_add(1);
    }
}

/// The public half of `server_secret`, in wire form (the enrollment answer's `server_public_key`).
pub fn server_public_key(secret: &SecretKey, device: Option<&DeviceId>) -> PublicKeyBytes {
    public_key_bytes(&server_secret(secret, device).public_key())
}

/// An AES-256-GCM sealed payload as it travels: both fields base64url without padding; the
/// ciphertext includes the 16-byte tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPayload {
    pub nonce: String,
    pub ciphertext: String,
}

/// The AES key of one transaction's payload: HKDF-SHA256 (ikm = the ECDH shared x-coordinate,
/// salt = the transaction id as text, info = `stepgate secure message v1`).
fn payload_cipher(
    own: &p256::SecretKey,
    peer: &p256::PublicKey,
    transaction_id: &str,
) -> Option<Aes256Gcm> {
    let shared = p256::ecdh::diffie_hellman(own.to_nonzero_scalar(), peer.as_affine());
    let hkdf = Hkdf::<Sha256>::new(
        Some(transaction_id.as_bytes()),
        shared.raw_secret_bytes().as_slice(),
    );
    let mut key = [0u8; 32];
    hkdf.expand(SECURE_MESSAGE_INFO.as_bytes(), &mut key).ok()?;
    Aes256Gcm::new_from_slice(&key).ok()
}

/// Seals `plaintext` for a device's encryption key, bound to the transaction (a payload cannot
/// be replayed under another transaction id). The nonce is 12 random bytes from the OS.
pub fn encrypt_for_device(
    server: &p256::SecretKey,
    device_encryption_key: &PublicKeyBytes,
    transaction_id: &str,
    plaintext: &[u8],
) -> Result<SealedPayload, CryptoError> {
    let peer = parse_public_key(device_encryption_key)?;
    let cipher = payload_cipher(server, &peer, transaction_id).ok_or(CryptoError::Seal)?;
    let mut nonce = [0u8; GCM_NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| CryptoError::Seal)?;
    Ok(SealedPayload {
        nonce: URL_SAFE_NO_PAD.encode(nonce),
        ciphertext: URL_SAFE_NO_PAD.encode(ciphertext),
    })
}

/// Opens a payload sealed by `encrypt_for_device` with the device's encryption key. Every
/// failure (bad encoding, wrong key, wrong transaction, tampering) is `CryptoError::Open`.
pub fn decrypt_from_server(
    device: &p256::SecretKey,
    server_public: &PublicKeyBytes,
    transaction_id: &str,
    sealed: &SealedPayload,
) -> Result<Vec<u8>, CryptoError> {
    let peer = parse_public_key(server_public).map_err(|_| CryptoError::Open)?;
    let nonce = URL_SAFE_NO_PAD
        .decode(sealed.nonce.as_bytes())
        .map_err(|_| CryptoError::Open)?;
    if nonce.len() != GCM_NONCE_LEN {
        return Err(CryptoError::Open);
    }
    let ciphertext = URL_SAFE_NO_PAD
        .decode(sealed.ciphertext.as_bytes())
        .map_err(|_| CryptoError::Open)?;
    let cipher = payload_cipher(device, &peer, transaction_id).ok_or(CryptoError::Open)?;
    cipher
        .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
        .map_err(|_| CryptoError::Open)
}

/// A fresh enrollment code: 20 Crockford base32 characters, 100 bits from the OS CSPRNG. Each
/// character takes the low 5 bits of its own random byte; 256 is a multiple of 32, so every
/// character is uniform.
pub fn generate_enrollment_code() -> String {
    let mut bytes = [0u8; ENROLLMENT_CODE_LEN];
    OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(CROCKFORD[usize::from(b & 0x1f)]))
        .collect()
}

/// Reads a code as a person may type it: any case, spaces and dashes ignored, `O` read as `0`
/// and `I`/`L` as `1` (Crockford's decoding). `None` for any other character or a wrong length.
pub fn normalize_enrollment_code(input: &str) -> Option<String> {
    let mut code = String::with_capacity(ENROLLMENT_CODE_LEN);
    for c in input.chars() {
        let normal = match c.to_ascii_uppercase() {
            ' ' | '-' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            other if other.is_ascii() && CROCKFORD.contains(&(other as u8)) => other,
            _ => return None,
        };
        if code.len() == ENROLLMENT_CODE_LEN {
            return None;
        }
        code.push(normal);
    }
    (code.len() == ENROLLMENT_CODE_LEN).then_some(code)
}

/// The stored form of an enrollment code: HMAC-SHA256 keyed by the operator secret's
/// `enrollment code` derivation. The input is normalised first, so every way of typing a code
/// hashes the same; input that is not a code at all hashes under a separate label and so can
/// never match a stored code.
pub fn enrollment_code_hash(secret: &SecretKey, code: &str) -> CodeHash {
    let key = secret.derive(ENROLLMENT_CODE_PURPOSE);
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
    match normalize_enrollment_code(code) {
        Some(normal) => {
            mac.update(b"code:");
            mac.update(normal.as_bytes());
        }
        None => {
            mac.update(b"invalid:");
            mac.update(code.as_bytes());
        }
    }
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    // 32 bytes always give 64 hex digits, which `from_hex` always accepts.
    CodeHash::from_hex(&hex::encode(digest)).unwrap_or_else(|| unreachable!())
}

/// A private key with a `Debug` that prints nothing of it; for callers that keep keys in
/// structs that derive `Debug`.
#[derive(Clone)]
pub struct PrivateKey(pub p256::SecretKey);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::{FieldBytes, Scalar};

    fn signing_key() -> SigningKey {
        SigningKey::random(&mut OsRng)
    }

    fn secret() -> SecretKey {
        SecretKey::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn public_keys_round_trip_in_uncompressed_form_only() {
        let key = signing_key();
        let wire = signing_public_key(&key);
        assert_eq!(wire.0.len(), 65);
        assert_eq!(wire.0[0], 0x04);
        let parsed = parse_public_key(&wire).unwrap();
        assert_eq!(public_key_bytes(&parsed), wire);

        let compressed = PublicKeyBytes(parsed.to_encoded_point(true).as_bytes().to_vec());
        assert_eq!(
            parse_public_key(&compressed),
            Err(CryptoError::InvalidPublicKey)
        );
        let mut off_curve = wire.clone();
        off_curve.0[64] ^= 1;
        assert_eq!(
            parse_public_key(&off_curve),
            Err(CryptoError::InvalidPublicKey)
        );
        assert!(parse_public_key(&PublicKeyBytes(vec![])).is_err());
    }

    #[test]
    fn pem_is_spki() {
        let wire = signing_public_key(&signing_key());
        let pem = public_key_pem(&wire).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert!(pem.trim_end().ends_with("-----END PUBLIC KEY-----"));
        use p256::pkcs8::DecodePublicKey;
        let back = p256::PublicKey::from_public_key_pem(&pem).unwrap();
        assert_eq!(public_key_bytes(&back), wire);
    }

    #[test]
    fn signatures_round_trip_and_are_fixed_size() {
        let key = signing_key();
        let public = signing_public_key(&key);
        let signature = sign(&key, b"hello");
        assert_eq!(URL_SAFE_NO_PAD.decode(&signature).unwrap().len(), 64);
        assert!(!signature.contains('='));
        assert_eq!(verify(&public, b"hello", &signature), Ok(()));
    }

    #[test]
    fn tampered_message_signature_or_key_fails_with_one_error() {
        let key = signing_key();
        let public = signing_public_key(&key);
        let signature = sign(&key, b"hello");

        assert_eq!(
            verify(&public, b"hellO", &signature),
            Err(CryptoError::InvalidSignature)
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&signature).unwrap();
        raw[10] ^= 0x01;
        let flipped = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            verify(&public, b"hello", &flipped),
            Err(CryptoError::InvalidSignature)
        );
        let other = signing_public_key(&signing_key());
        assert_eq!(
            verify(&other, b"hello", &signature),
            Err(CryptoError::InvalidSignature)
        );
        for garbage in ["", "!!!", "AAAA", &format!("{signature}AA")] {
            assert_eq!(
                verify(&public, b"hello", garbage),
                Err(CryptoError::InvalidSignature),
                "{garbage}"
            );
        }
        assert_eq!(
            verify(&PublicKeyBytes(vec![4; 65]), b"hello", &signature),
            Err(CryptoError::InvalidSignature)
        );
        // A DER signature is not the wire form.
        let der = Signature::from_slice(&URL_SAFE_NO_PAD.decode(&signature).unwrap())
            .unwrap()
            .to_der();
        assert!(verify(&public, b"hello", &URL_SAFE_NO_PAD.encode(der.as_bytes())).is_err());
    }

    #[test]
    fn high_s_signatures_verify_too() {
        let key = signing_key();
        let public = signing_public_key(&key);
        let signature: Signature = key.sign(b"message");
        let (r, s) = signature.split_scalars();
        let negated = Signature::from_scalars(r, -*s).unwrap();
        // Exactly one of (r, s) and (r, -s) is high-S; both must verify.
        assert_ne!(
            signature.normalize_s().is_some(),
            negated.normalize_s().is_some()
        );
        for form in [signature, negated] {
            let encoded = URL_SAFE_NO_PAD.encode(form.to_bytes());
            assert_eq!(verify(&public, b"message", &encoded), Ok(()));
        }
    }

    #[test]
    fn our_signatures_are_low_s() {
        let key = signing_key();
        for n in 0..32u8 {
            let raw = URL_SAFE_NO_PAD.decode(sign(&key, &[n])).unwrap();
            let parsed = Signature::from_slice(&raw).unwrap();
            assert!(parsed.normalize_s().is_none(), "signature {n} is high-S");
        }
    }

    #[test]
    fn canonical_request_has_the_exact_layout() {
        let canonical = canonical_request(
            "post",
            "/device/v1/transactions/abc?x=1",
            1_700_000_000_123,
            "bm9uY2U",
            b"",
        );
        assert_eq!(
            canonical,
            "stepgate-device-v1\nPOST\n/device/v1/transactions/abc?x=1\n1700000000123\nbm9uY2U\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let with_body = canonical_request("PUT", "/device/v1/push-registration", 1, "n", b"abc");
        assert_eq!(
            with_body,
            "stepgate-device-v1\nPUT\n/device/v1/push-registration\n1\nn\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!with_body.ends_with('\n'));
    }

    #[test]
    fn statements_have_the_exact_layout() {
        assert_eq!(enroll_statement("ABC"), "stepgate-enroll-v1\nABC");
        assert_eq!(
            answer_statement("0c6f", "approve", Some(47)),
            "stepgate-answer-v1\n0c6f\napprove\n47"
        );
        assert_eq!(
            answer_statement("0c6f", "deny", None),
            "stepgate-answer-v1\n0c6f\ndeny\n-"
        );
    }

    #[test]
    fn pin_key_is_deterministic_per_pin_and_salt() {
        let salt = [7u8; 16];
        let a = derive_pin_key("12345", &salt).unwrap();
        let again = derive_pin_key("12345", &salt).unwrap();
        assert_eq!(signing_public_key(&a), signing_public_key(&again));
        let other_pin = derive_pin_key("12346", &salt).unwrap();
        assert_ne!(signing_public_key(&a), signing_public_key(&other_pin));
        let other_salt = derive_pin_key("12345", &[8u8; 16]).unwrap();
        assert_ne!(signing_public_key(&a), signing_public_key(&other_salt));

        // The key is argon2id(pin, salt) itself when that is a valid scalar (known parameters).
        let params = argon2::Params::new(8192, 1, 1, Some(32)).unwrap();
        let mut raw = [0u8; 32];
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(b"12345", &salt, &mut raw)
            .unwrap();
        assert_eq!(a.to_bytes().as_slice(), raw.as_slice());

        let statement = answer_statement("tx", "approve", None);
        let signature = sign(&a, statement.as_bytes());
        assert!(
            verify(
                &signing_public_key(&again),
                statement.as_bytes(),
                &signature
            )
            .is_ok()
        );
        assert!(
            verify(
                &signing_public_key(&other_pin),
                statement.as_bytes(),
                &signature
            )
            .is_err()
        );
    }

    #[test]
    fn sealed_payloads_open_only_for_the_same_transaction_and_keys() {
        let server = server_secret(&secret(), None);
        let server_public = public_key_bytes(&server.public_key());
        let device = p256::SecretKey::random(&mut OsRng);
        let device_public = public_key_bytes(&device.public_key());
        let plaintext = br#"{"secure_message":"cGF5","signing_data":null}"#;

        let sealed = encrypt_for_device(&server, &device_public, "tx-1", plaintext).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&sealed.nonce).unwrap().len(), 12);
        assert_eq!(
            decrypt_from_server(&device, &server_public, "tx-1", &sealed).unwrap(),
            plaintext
        );
        assert_eq!(
            decrypt_from_server(&device, &server_public, "tx-2", &sealed),
            Err(CryptoError::Open)
        );
        let stranger = p256::SecretKey::random(&mut OsRng);
        assert_eq!(
            decrypt_from_server(&stranger, &server_public, "tx-1", &sealed),
            Err(CryptoError::Open)
        );
        let mut tampered = sealed.clone();
        let mut raw = URL_SAFE_NO_PAD.decode(&tampered.ciphertext).unwrap();
        raw[0] ^= 1;
        tampered.ciphertext = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            decrypt_from_server(&device, &server_public, "tx-1", &tampered),
            Err(CryptoError::Open)
        );
        let bad_nonce = SealedPayload {
            nonce: "AAAA".into(),
            ciphertext: sealed.ciphertext.clone(),
        };
        assert_eq!(
            decrypt_from_server(&device, &server_public, "tx-1", &bad_nonce),
            Err(CryptoError::Open)
        );
        // Fresh nonce every time.
        let again = encrypt_for_device(&server, &device_public, "tx-1", plaintext).unwrap();
        assert_ne!(again.nonce, sealed.nonce);
        assert_eq!(
            serde_json::to_value(&sealed)
                .unwrap()
                .as_object()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn server_key_is_stable_and_unique_per_device_when_asked() {
        let shared = server_public_key(&secret(), None);
        assert_eq!(shared, server_public_key(&secret(), None));
        assert!(parse_public_key(&shared).is_ok());
        let other_secret = SecretKey::new(vec![9u8; 32]);
        assert_ne!(shared, server_public_key(&other_secret, None));

        let (a, b) = (DeviceId::random(), DeviceId::random());
        let for_a = server_public_key(&secret(), Some(&a));
        assert_eq!(for_a, server_public_key(&secret(), Some(&a)));
        assert_ne!(for_a, server_public_key(&secret(), Some(&b)));
        assert_ne!(for_a, shared);
    }

    #[test]
    fn server_key_follows_the_documented_hkdf() {
        let ikm = secret().derive("device server key");
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(b"stepgate device server key v1", &mut okm)
            .unwrap();
        assert_eq!(
            server_secret(&secret(), None).to_bytes().as_slice(),
            okm.as_slice()
        );
    }

    #[test]
    fn enrollment_codes_are_crockford_and_normalise() {
        for _ in 0..200 {
            let code = generate_enrollment_code();
            assert_eq!(code.len(), 20);
            assert!(code.bytes().all(|b| CROCKFORD.contains(&b)), "{code}");
            assert_eq!(
                normalize_enrollment_code(&code).as_deref(),
                Some(code.as_str())
            );
        }
        assert_ne!(generate_enrollment_code(), generate_enrollment_code());

        assert_eq!(
            normalize_enrollment_code("abcd-efgh jkmn-pqrs-tvwx").as_deref(),
            Some("ABCDEFGHJKMNPQRSTVWX")
        );
        assert_eq!(
            normalize_enrollment_code("oOiIlL0000-1111-2222-33").as_deref(),
            Some("00111100001111222233")
        );
        for bad in [
            "",
            "ABCDEFGHJKMNPQRSTVW",   // 19
            "ABCDEFGHJKMNPQRSTVWXY", // 21
            "ABCDEFGHJKMNPQRSTVWU",  // U is not in the alphabet
            "ABCDEFGHJKMNPQRSTVW_",  // nor is _
            "ABCDEFGHJKMNPQRSTVWÄ",
        ] {
            assert_eq!(normalize_enrollment_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_character_is_drawn_from_the_whole_alphabet() {
        let mut seen = [0u32; 32];
        for _ in 0..500 {
            for b in generate_enrollment_code().bytes() {
                let index = CROCKFORD.iter().position(|c| *c == b).unwrap();
                seen[index] += 1;
            }
        }
        // 10,000 characters, about 312 each; 5 sigma is about 87.
        for (index, count) in seen.iter().enumerate() {
            assert!(
                (200..=430).contains(count),
                "{}: {count}",
                CROCKFORD[index] as char
            );
        }
    }

    #[test]
    fn enrollment_code_hash_ignores_typing_and_depends_on_the_secret() {
        let code = generate_enrollment_code();
        let typed = format!("{}-{}", &code[..10].to_lowercase(), &code[10..]);
        let hash = enrollment_code_hash(&secret(), &code);
        assert!(hash.matches(&enrollment_code_hash(&secret(), &typed)));
        assert!(!hash.matches(&enrollment_code_hash(&SecretKey::new(vec![1u8; 32]), &code)));
        assert!(!hash.matches(&enrollment_code_hash(
            &secret(),
            &generate_enrollment_code()
        )));
        assert!(!enrollment_code_hash(&secret(), "nope").matches(&hash));
    }

    #[test]
    fn debug_output_hides_private_material() {
        let key = server_secret(&secret(), None);
        let hex_scalar = hex::encode(key.to_bytes());
        let debug = format!("{:?}", PrivateKey(key.clone()));
        assert!(!debug.contains(&hex_scalar));
        assert!(!format!("{key:?}").contains(&hex_scalar));
        let pin_key = derive_pin_key("1234", &[1u8; 16]).unwrap();
        assert!(!format!("{pin_key:?}").contains(&hex::encode(pin_key.to_bytes())));
    }

    #[test]
    fn scalar_bounds_are_those_of_p256() {
        // The re-hash rule relies on from_bytes refusing zero and values >= n.
        assert!(SigningKey::from_bytes(&FieldBytes::default()).is_err());
        let order_minus_one = -Scalar::ONE;
        assert!(SigningKey::from_bytes(&order_minus_one.to_bytes()).is_ok());
        assert!(SigningKey::from_bytes(&[0xff; 32].into()).is_err());
    }
}
