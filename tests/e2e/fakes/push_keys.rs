//! Test credentials for the push fakes, made by `openssl` in a temporary folder: an APNs auth
//! key (`AuthKey_<key id>.p8`, a PKCS#8 PEM P-256 key, the shape Apple hands out) with its public
//! key, and a Firebase service-account JSON (a 2048-bit RSA key) with its public key. The fakes
//! verify signatures with the public halves; stepgate's config points at the private ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

pub const TEAM_ID: &str = "TEAM0STEP1";
pub const KEY_ID: &str = "KEY0STEP01";
pub const PROJECT_ID: &str = "stepgate-test";
pub const CLIENT_EMAIL: &str = "push@stepgate-test.iam.gserviceaccount.com";
pub const PRIVATE_KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";

pub struct PushKeys {
    dir: TempDir,
}

pub(crate) fn openssl(dir: &Path, args: &str) {
    let status = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args}");
}

impl PushKeys {
    /// Fresh keys; the service account's `token_uri` is Google's until `write_service_account`
    /// points it at a fake.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        openssl(
            path,
            &format!(
                "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out AuthKey_{KEY_ID}.p8"
            ),
        );
        openssl(
            path,
            &format!("pkey -in AuthKey_{KEY_ID}.p8 -pubout -out apns_public.pem"),
        );
        openssl(
            path,
            "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out fcm_private.pem",
        );
        openssl(path, "pkey -in fcm_private.pem -pubout -out fcm_public.pem");
        let keys = Self { dir };
        keys.write_service_account("https://oauth2.googleapis.com/token");
        keys
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `.p8` file for `push_configs[].key_file`.
    pub fn apns_key_file(&self) -> PathBuf {
        self.dir().join(format!("AuthKey_{KEY_ID}.p8"))
    }

    /// The public half of the APNs key (PEM), for the fake's signature checks.
    pub fn apns_public_key(&self) -> PathBuf {
        self.dir().join("apns_public.pem")
    }

    /// The service-account JSON for `push_configs[].service_account_file`.
    pub fn service_account_file(&self) -> PathBuf {
        self.dir().join("service-account.json")
    }

    /// The public half of the service account's key (PEM), for the fake's signature checks.
    pub fn service_account_public_key(&self) -> PathBuf {
        self.dir().join("fcm_public.pem")
    }

    /// (Re)writes the service-account JSON with `token_uri`, as the Firebase console shapes it.
    pub fn write_service_account(&self, token_uri: &str) -> PathBuf {
        let private_key = fs::read_to_string(self.dir().join("fcm_private.pem")).expect("rsa key");
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": PRIVATE_KEY_ID,
            "private_key": private_key,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        });
        let file = self.service_account_file();
        fs::write(&file, serde_json::to_string_pretty(&account).expect("json")).expect("write");
        file
    }
}
