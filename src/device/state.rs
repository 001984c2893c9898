//! The reference phone client's state directory: what a phone app keeps in its key store and
//! preferences. `device.json` (ids, the server's public key, the API it enrolled with), the private
//! keys as PKCS#8 PEM (`signing.key`, `encryption.key`, `biometric.key`, `custom.key`), the PIN
//! salt (`pin.salt`, 16 raw bytes) and the transaction details fetched once (`tx/{id}.json`).
//! The directory is created 0700 and every file is written 0600, atomically (temporary file, then
//! rename), so a crash never leaves half a key behind. The PIN-derived public key is never stored.
//!
//! May import: `domain` (plus external crates).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p256::SecretKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::clock::Timestamp;
use crate::domain::device::{DeviceId, Platform, PublicKeyBytes};

const DEVICE_FILE: &str = "device.json";
const PIN_SALT_FILE: &str = "pin.salt";
const TRANSACTIONS_DIR: &str = "tx";
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// What went wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("not enrolled: {} holds no device.json (run `stepgate device enroll` first)", dir.display())]
    NotEnrolled { dir: PathBuf },
    #[error("already enrolled: {} holds a device.json; enroll with a new --state directory", dir.display())]
    AlreadyEnrolled { dir: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is damaged: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// `device.json`: who this device is and whom it talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub device_id: DeviceId,
    pub user_id: String,
    /// The API base URL the device enrolled with (used when `--api` is not given).
    pub api: String,
    pub server_public_key: PublicKeyBytes,
    pub application: String,
    pub platform: Platform,
}

/// The private keys a device keeps (the PIN key is derived, never kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    Signing,
    Encryption,
    Biometric,
    CustomAuthenticator,
}

impl KeyFile {
    pub fn file_name(self) -> &'static str {
        match self {
            KeyFile::Signing => "signing.key",
            KeyFile::Encryption => "encryption.key",
            KeyFile::Biometric => "biometric.key",
            KeyFile::CustomAuthenticator => "custom.key",
        }
    }
}

/// A transaction's details as fetched (and decrypted) once, kept because the server answers a
/// second fetch with `410 already_fetched`. `secure_message` and `signing_data` stay base64url,
/// exactly as decrypted, so the signing data is signed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionDetails {
    pub transaction_id: Uuid,
    pub auth_method: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub number_choices: Option<Vec<u8>>,
    /// `pick` or `type` under number matching.
    #[serde(default)]
    pub number_matching: Option<String>,
    #[serde(default)]
    pub secure_message: Option<String>,
    #[serde(default)]
    pub signing_data: Option<String>,
}

/// The state directory of one device.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// For enrollment: creates the directory (0700) if needed; refuses one that already holds an
    /// enrollment, whose keys would otherwise be overwritten.
    pub fn create(root: &Path) -> Result<Self, StateError> {
        create_private_dir(root)?;
        let dir = Self {
            root: root.to_owned(),
        };
        if dir.file(DEVICE_FILE).exists() {
            return Err(StateError::AlreadyEnrolled {
                dir: root.to_owned(),
            });
        }
        Ok(dir)
    }

    /// An enrolled device's directory and its `device.json`.
    pub fn open(root: &Path) -> Result<(Self, DeviceState), StateError> {
        let dir = Self {
            root: root.to_owned(),
        };
        let path = dir.file(DEVICE_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotEnrolled {
                    dir: root.to_owned(),
                });
            }
            Err(source) => return Err(io_error("read", &path, source)),
        };
        let device = serde_json::from_slice(&text).map_err(|error| StateError::Corrupt {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        Ok((dir, device))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Written last at enrollment: its presence means "enrolled".
    pub fn save_device(&self, device: &DeviceState) -> Result<(), StateError> {
        let path = self.file(DEVICE_FILE);
        let text = serde_json::to_vec_pretty(device).map_err(|error| StateError::Corrupt {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        write_private(&path, &text)
    }

    pub fn save_key(&self, which: KeyFile, key: &SecretKey) -> Result<(), StateError> {
        let path = self.file(which.file_name());
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|error| StateError::Corrupt {
                path: path.clone(),
                reason: format!("the key does not encode as PKCS#8: {error}"),
            })?;
        write_private(&path, pem.as_bytes())
    }

    /// The key, or `None` when the device did not enroll one (no file).
    pub fn load_key(&self, which: KeyFile) -> Result<Option<SecretKey>, StateError> {
        let path = self.file(which.file_name());
        let Some(pem) = read_if_present(&path)? else {
            return Ok(None);
        };
        let text = String::from_utf8(pem).map_err(|_| StateError::Corrupt {
            path: path.clone(),
            reason: "not a PEM file".to_owned(),
        })?;
        SecretKey::from_pkcs8_pem(&text)
            .map(Some)
            .map_err(|error| StateError::Corrupt {
                path,
                reason: format!("not a PKCS#8 P-256 private key: {error}"),
            })
    }

    pub fn save_pin_salt(&self, salt: &[u8; 16]) -> Result<(), StateError> {
        write_private(&self.file(PIN_SALT_FILE), salt)
    }

    /// The PIN salt, or `None` when the device enrolled without a PIN.
    pub fn load_pin_salt(&self) -> Result<Option<[u8; 16]>, StateError> {
        let path = self.file(PIN_SALT_FILE);
        let Some(bytes) = read_if_present(&path)? else {
            return Ok(None);
        };
        <[u8; 16]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| StateError::Corrupt {
                path,
                reason: format!("expected 16 bytes, found {}", bytes.len()),
            })
    }

    pub fn save_transaction(&self, details: &TransactionDetails) -> Result<(), StateError> {
        create_private_dir(&self.root.join(TRANSACTIONS_DIR))?;
        let path = self.transaction_file(&details.transaction_id);
        let text = serde_json::to_vec_pretty(details).map_err(|error| StateError::Corrupt {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        write_private(&path, &text)
    }

    /// The cached details of a transaction, or `None` when they were never fetched here.
    pub fn load_transaction(&self, id: &Uuid) -> Result<Option<TransactionDetails>, StateError> {
        let path = self.transaction_file(id);
        let Some(text) = read_if_present(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|error| StateError::Corrupt {
                path,
                reason: error.to_string(),
            })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A `Uuid` prints as hex and hyphens only, so the name cannot leave `tx/`.
    fn transaction_file(&self, id: &Uuid) -> PathBuf {
        self.root
            .join(TRANSACTIONS_DIR)
            .join(format!("{}.json", id.hyphenated()))
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> StateError {
    StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn create_private_dir(path: &Path) -> Result<(), StateError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| io_error("create the directory", path, source))
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error("read", path, source)),
    }
}

/// Writes `path` 0600 through a temporary file in the same directory and a rename, so readers
/// see the old or the new content, never a torn one.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&temporary)?;
        // `mode` applies only when the file is created; a leftover temporary keeps its own.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&temporary);
        return Err(io_error("write", path, source));
    }
    fs::rename(&temporary, path).map_err(|source| io_error("write", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceState {
        DeviceState {
            device_id: DeviceId::random(),
            user_id: "ann".to_owned(),
            api: "http://127.0.0.1:1".to_owned(),
            server_public_key: PublicKeyBytes(vec![4; 65]),
            application: "bank-app".to_owned(),
            platform: Platform::Android,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_round_trips_with_private_modes() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("phone");
        let dir = StateDir::create(&root).unwrap();
        assert_eq!(mode(&root), 0o700);

        let device = device();
        let signing = SecretKey::random(&mut rand_core::OsRng);
        dir.save_key(KeyFile::Signing, &signing).unwrap();
        dir.save_pin_salt(&[7; 16]).unwrap();
        dir.save_device(&device).unwrap();

        let (opened, loaded) = StateDir::open(&root).unwrap();
        assert_eq!(loaded, device);
        assert_eq!(
            opened
                .load_key(KeyFile::Signing)
                .unwrap()
                .unwrap()
                .to_bytes(),
            signing.to_bytes()
        );
        assert_eq!(opened.load_key(KeyFile::Biometric).unwrap(), None);
        assert_eq!(opened.load_pin_salt().unwrap(), Some([7; 16]));
        for name in ["device.json", "signing.key", "pin.salt"] {
            assert_eq!(mode(&root.join(name)), 0o600, "{name}");
        }
        assert!(!root.join("device.json.tmp").exists());
    }

    #[test]
    fn a_second_enrollment_in_the_same_directory_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = StateDir::create(scratch.path()).unwrap();
        dir.save_device(&device()).unwrap();
        assert!(matches!(
            StateDir::create(scratch.path()),
            Err(StateError::AlreadyEnrolled { .. })
        ));
    }

    #[test]
    fn an_empty_directory_is_not_enrolled() {
        let scratch = tempfile::tempdir().unwrap();
        let error = StateDir::open(scratch.path()).unwrap_err();
        assert!(matches!(error, StateError::NotEnrolled { .. }));
        assert!(error.to_string().contains("not enrolled"));
    }

    #[test]
    fn transaction_details_are_cached_0600() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = StateDir::create(scratch.path()).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(dir.load_transaction(&id).unwrap(), None);
        let details = TransactionDetails {
            transaction_id: id,
            auth_method: "push_with_pin".to_owned(),
            message: Some("Sign in?".to_owned()),
            expires_at: Some(Timestamp(1_700_000_000_000)),
            number_choices: Some(vec![12, 47, 83]),
            number_matching: Some("pick".into()),
            secure_message: Some("aGk".to_owned()),
            signing_data: None,
        };
        dir.save_transaction(&details).unwrap();
        assert_eq!(dir.load_transaction(&id).unwrap(), Some(details));
        let file = scratch.path().join("tx").join(format!("{id}.json"));
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&scratch.path().join("tx")), 0o700);
    }

    #[test]
    fn a_damaged_key_file_is_reported_with_its_path() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = StateDir::create(scratch.path()).unwrap();
        fs::write(scratch.path().join("signing.key"), "not a key").unwrap();
        let error = dir.load_key(KeyFile::Signing).unwrap_err();
        assert!(error.to_string().contains("signing.key"), "{error}");
    }
}
