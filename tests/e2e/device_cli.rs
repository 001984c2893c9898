//! The reference phone client, `stepgate device`, as scripts drive it: `DeviceCli` (a state
//! directory and the API URL; `run` gives exit code, stdout JSON, stderr) for the end-to-end
//! tests against the real gate, and tests of the client alone against a fake device API that
//! checks every proof and request signature with `device_crypto` on what actually arrived.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use stepgate::domain::device::{DeviceId, DeviceKeys, PublicKeyBytes};
use stepgate::domain::device_crypto;
use tempfile::TempDir;

use crate::fakes::Server;
use crate::harness::{BINARY, free_addr};

/// A phone: a private state directory and the gate's API URL.
pub struct DeviceCli {
    dir: TempDir,
    api: String,
}

#[allow(dead_code)]
impl DeviceCli {
    pub fn new(api_url: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("state directory"),
            api: api_url.to_owned(),
        }
    }

    /// The `--state` directory (created by `enroll`, inside a scratch directory).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("phone")
    }

    /// `stepgate device --api URL --state DIR <args>`: exit code, stdout as JSON (`Null` when
    /// empty; anything but one JSON object is a failure) and stderr.
    pub fn run(&self, args: &[&str]) -> (i32, Value, String) {
        let output = Command::new(BINARY)
            .arg("device")
            .arg("--api")
            .arg(&self.api)
            .arg("--state")
            .arg(self.state_dir())
            .args(args)
            .env_remove("STEPGATE_DEVICE_API")
            .output()
            .expect("run stepgate device");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            assert_eq!(
                stdout.trim_end().lines().count(),
                1,
                "one JSON object per command, got:\n{stdout}"
            );
            let value: Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|error| panic!("stdout is not JSON ({error}):\n{stdout}"));
            assert!(value.is_object(), "stdout is not a JSON object: {stdout}");
            value
        };
        (output.status.code().unwrap_or(-1), json, stderr)
    }

    /// Enrolls (asserting success) and returns the device id.
    pub fn enroll(&self, code: &str, app: &str, extra_args: &[&str]) -> String {
        let mut args = vec!["enroll", "--code", code, "--application", app];
        args.extend_from_slice(extra_args);
        let (exit, json, stderr) = self.run(&args);
        assert_eq!(exit, 0, "enroll failed: {stderr}");
        json["device_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no device_id in {json}"))
            .to_owned()
    }
}

// ---- a fake device API -----------------------------------------------------------------------

const CODE: &str = "ABCDEFGHJKMNPQRSTVWX";
const USER: &str = "ann";
const SECURE_MESSAGE: &str = "Pay 10 EUR to NL01 BANK 0123 4567 89";
const SIGNING_DATA: &str = "transfer;amount=10.00;iban=NL01BANK0123456789";
const TRANSACTION: &str = "0c6f3e2a-5b1d-4c8e-9f7a-2d4b6e8a1c3f";

#[derive(Default)]
struct FakeState {
    devices: HashMap<String, DeviceKeys>,
    nonces: HashSet<String>,
    /// Transactions whose details were fetched (a second fetch is `410 already_fetched`).
    fetched: HashSet<String>,
    /// Every request that reached a handler, as `METHOD path?query`.
    requests: Vec<String>,
    answers: Vec<Value>,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<FakeState>>,
    server_key: Arc<p256::SecretKey>,
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({ "error": error }))).into_response()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The protocol's request check: known device, fresh timestamp, unseen nonce, and a signature
/// over the canonical string rebuilt from the method, path, query and body that arrived. `None`
/// for any failure (one answer for all causes, as the server gives).
fn check_signature(
    fake: &Fake,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<DeviceKeys> {
    let header = |name: &str| headers.get(name)?.to_str().ok().map(str::to_owned);
    let device_id = header("stepgate-device-id")?;
    let timestamp: u64 = header("stepgate-timestamp")?.parse().ok()?;
    let nonce = header("stepgate-nonce")?;
    let signature = header("stepgate-signature")?;
    if now_ms().abs_diff(timestamp) > 120_000 {
        return None;
    }
    if URL_SAFE_NO_PAD.decode(&nonce).ok()?.len() != 16 {
        return None;
    }
    let mut state = fake.state.lock().unwrap();
    let keys = state.devices.get(&device_id).cloned()?;
    let path_and_query = uri.path_and_query()?.as_str();
    let canonical =
        device_crypto::canonical_request(method.as_str(), path_and_query, timestamp, &nonce, body);
    device_crypto::verify(&keys.signing, canonical.as_bytes(), &signature).ok()?;
    state.nonces.insert(nonce).then_some(keys)
}

fn enroll(fake: &Fake, body: &[u8]) -> Response {
    let bad = || refuse(StatusCode::BAD_REQUEST, "invalid_request");
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return bad();
    };
    if request["code"] != CODE {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_code");
    }
    let Ok(keys) = serde_json::from_value::<DeviceKeys>(request["keys"].clone()) else {
        return bad();
    };
    let all_keys = [
        Some(&keys.signing),
        Some(&keys.encryption),
        keys.pin.as_ref(),
        keys.biometric.as_ref(),
        keys.custom_authenticator.as_ref(),
    ];
    if all_keys
        .into_iter()
        .flatten()
        .any(|key| device_crypto::parse_public_key(key).is_err())
    {
        return bad();
    }
    let proof = request["proof"].as_str().unwrap_or_default();
    let statement = device_crypto::enroll_statement(CODE);
    if device_crypto::verify(&keys.signing, statement.as_bytes(), proof).is_err() {
        return bad();
    }
    let device_id = DeviceId::random().to_string();
    fake.state
        .lock()
        .unwrap()
        .devices
        .insert(device_id.clone(), keys);
    let server_public = device_crypto::public_key_bytes(&fake.server_key.public_key());
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "device_id": device_id,
            "user_id": USER,
            "server_public_key": server_public,
        })),
    )
        .into_response()
}

fn details(fake: &Fake, keys: &DeviceKeys) -> Response {
    if !fake
        .state
        .lock()
        .unwrap()
        .fetched
        .insert(TRANSACTION.to_owned())
    {
        return refuse(StatusCode::GONE, "already_fetched");
    }
    let plaintext = json!({
        "secure_message": URL_SAFE_NO_PAD.encode(SECURE_MESSAGE),
        "signing_data": URL_SAFE_NO_PAD.encode(SIGNING_DATA),
    });
    let sealed = device_crypto::encrypt_for_device(
        &fake.server_key,
        &keys.encryption,
        TRANSACTION,
        plaintext.to_string().as_bytes(),
    )
    .unwrap();
    axum::Json(json!({
        "transaction_id": TRANSACTION,
        "auth_method": "push_with_pin",
        "message": "Approve the transfer?",
        "expires_at": now_ms() + 300_000,
        "number_choices": [12, 47, 83],
        "encrypted": sealed,
    }))
    .into_response()
}

/// `push_with_pin` with number matching (47) and transaction signing, as the protocol says.
fn answer(fake: &Fake, keys: &DeviceKeys, body: &[u8]) -> Response {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request");
    };
    fake.state.lock().unwrap().answers.push(answer.clone());
    if answer["decision"] == "deny" {
        return axum::Json(json!({ "transaction_id": TRANSACTION, "status": "denied" }))
            .into_response();
    }
    let pin_key = keys.pin.as_ref().unwrap();
    let number = answer["number"].as_u64().map(|n| n as u8);
    let statement = device_crypto::answer_statement(TRANSACTION, "approve", number);
    let pin_signed = answer["authenticator"] == "pin"
        && device_crypto::verify(
            pin_key,
            statement.as_bytes(),
            answer["authenticator_signature"]
                .as_str()
                .unwrap_or_default(),
        )
        .is_ok();
    if !pin_signed {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": "invalid_pin", "remaining_attempts": 2 })),
        )
            .into_response();
    }
    let signing_data_signed = device_crypto::verify(
        pin_key,
        SIGNING_DATA.as_bytes(),
        answer["signing_signature"].as_str().unwrap_or_default(),
    )
    .is_ok();
    if !signing_data_signed {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let status = if number == Some(47) {
        "approved"
    } else {
        "denied"
    };
    axum::Json(json!({ "transaction_id": TRANSACTION, "status": status })).into_response()
}

async fn handle(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.state
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {uri}"));
    if method == Method::POST && uri.path() == "/device/v1/enroll" {
        return enroll(&fake, &body);
    }
    let Some(keys) = check_signature(&fake, &method, &uri, &headers, &body) else {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_signature");
    };
    let transaction = format!("/device/v1/transactions/{TRANSACTION}");
    match (method.as_str(), uri.path()) {
        ("GET", "/device/v1/transactions") => axum::Json(json!({
            "transactions": [{
                "transaction_id": TRANSACTION,
                "auth_method": "push_with_pin",
                "message": "Approve the transfer?",
                "expires_at": now_ms() + 300_000,
            }]
        }))
        .into_response(),
        ("GET", path) if path == transaction => details(&fake, &keys),
        ("POST", path) if path == format!("{transaction}/answer") => answer(&fake, &keys, &body),
        ("PUT", "/device/v1/push-registration") => {
            axum::Json(json!({ "registered": true, "replaced_device_ids": [] })).into_response()
        }
        _ => refuse(StatusCode::NOT_FOUND, "not_found"),
    }
}

fn fake_device_api() -> (Server, Fake) {
    let fake = Fake {
        state: Arc::new(Mutex::new(FakeState::default())),
        server_key: Arc::new(p256::SecretKey::random(&mut rand_core::OsRng)),
    };
    let router = Router::new().fallback(handle).with_state(fake.clone());
    (Server::start(router), fake)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn an_unreachable_server_fails_with_a_clear_message_and_no_output() {
    // A port nobody listens on: bound, then released.
    let api = format!("http://{}", free_addr());
    let phone = DeviceCli::new(&api);
    let (exit, json, stderr) = phone.run(&["enroll", "--code", CODE, "--application", "bank-app"]);
    assert_eq!(exit, 1, "{stderr}");
    assert_eq!(json, Value::Null);
    assert!(stderr.contains("stepgate device enroll:"), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!phone.state_dir().join("device.json").exists());
}

#[test]
fn commands_before_enroll_say_not_enrolled() {
    let phone = DeviceCli::new(&format!("http://{}", free_addr()));
    for args in [vec!["pending"], vec!["deny", TRANSACTION]] {
        let (exit, json, stderr) = phone.run(&args);
        assert_eq!(exit, 1, "{args:?}: {stderr}");
        assert_eq!(json, Value::Null);
        assert!(stderr.contains("not enrolled"), "{stderr}");
    }
}

#[test]
fn bad_arguments_exit_2() {
    let phone = DeviceCli::new("http://127.0.0.1:9");
    let (exit, json, _) = phone.run(&["show", "not-a-uuid"]);
    assert_eq!((exit, json), (2, Value::Null));
    let (exit, _, _) = phone.run(&["approve", TRANSACTION, "--pin", "1234", "--biometric"]);
    assert_eq!(exit, 2);
    let (exit, _, stderr) = phone.run(&[
        "enroll",
        "--code",
        CODE,
        "--application",
        "bank-app",
        "--platform",
        "windows",
    ]);
    assert_eq!(exit, 2, "{stderr}");
}

#[test]
fn enroll_and_pending_are_signed_as_the_protocol_says() {
    let (server, fake) = fake_device_api();
    let phone = DeviceCli::new(&server.url());
    // Typed as a person might: lower case with dashes. The client sends and proves the canonical
    // code, which the fake insists on.
    let typed_code = "abcde-fghjk-mnpqr-stvwx";
    let device_id = phone.enroll(
        typed_code,
        "bank-app",
        &["--name", "Ann's Pixel", "--pin", "2468", "--biometric"],
    );
    let keys = fake.state.lock().unwrap().devices[&device_id].clone();
    assert!(keys.pin.is_some() && keys.biometric.is_some());
    assert_eq!(keys.custom_authenticator, None);

    // State: 0700 directory, 0600 files, and the PIN's public key nowhere in it.
    let dir = phone.state_dir();
    assert_eq!(mode(&dir), 0o700);
    let files = files_under(&dir);
    let names: HashSet<String> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "device.json",
        "signing.key",
        "encryption.key",
        "biometric.key",
        "pin.salt",
    ] {
        assert!(names.contains(expected), "{expected} missing: {names:?}");
    }
    assert!(!names.contains("custom.key"));
    let pin_public = URL_SAFE_NO_PAD.encode(&keys.pin.as_ref().unwrap().0);
    let pin_public_hex = hex::encode(&keys.pin.as_ref().unwrap().0);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
        let content = fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&content);
        assert!(
            !text.contains(&pin_public),
            "{} holds the PIN key",
            file.display()
        );
        assert!(!text.contains(&pin_public_hex), "{}", file.display());
        assert!(
            !content
                .windows(65)
                .any(|window| window == keys.pin.as_ref().unwrap().0.as_slice()),
            "{} holds the PIN key (raw)",
            file.display()
        );
    }
    let device: Value =
        serde_json::from_slice(&fs::read(dir.join("device.json")).unwrap()).unwrap();
    assert_eq!(device["device_id"], device_id.as_str());
    assert_eq!(device["user_id"], USER);
    assert_eq!(device["application"], "bank-app");
    assert_eq!(device["platform"], "android");
    assert_eq!(
        serde_json::from_value::<PublicKeyBytes>(device["server_public_key"].clone()).unwrap(),
        device_crypto::public_key_bytes(&fake.server_key.public_key())
    );

    // Twice: a fresh nonce each time (the fake refuses a replayed one).
    for _ in 0..2 {
        let (exit, json, stderr) = phone.run(&["pending"]);
        assert_eq!(exit, 0, "{stderr}");
        let transactions = json["transactions"].as_array().unwrap();
        assert_eq!(transactions.len(), 1);
        assert_eq!(transactions[0]["transaction_id"], TRANSACTION);
        assert_eq!(transactions[0]["message"], "Approve the transfer?");
        assert_eq!(transactions[0]["auth_method"], "push_with_pin");
    }

    // A second enroll into the same directory is refused before the server is asked.
    let before = fake.state.lock().unwrap().requests.len();
    let (exit, _, stderr) = phone.run(&["enroll", "--code", CODE, "--application", "bank-app"]);
    assert_eq!(exit, 1);
    assert!(stderr.contains("already enrolled"), "{stderr}");
    assert_eq!(fake.state.lock().unwrap().requests.len(), before);
}

#[test]
fn show_decrypts_once_and_approve_signs_with_the_pin_key() {
    let (server, fake) = fake_device_api();
    let phone = DeviceCli::new(&server.url());
    phone.enroll(CODE, "bank-app", &["--pin", "2468"]);

    let (exit, shown, stderr) = phone.run(&["show", TRANSACTION]);
    assert_eq!(exit, 0, "{stderr}");
    assert_eq!(shown["transaction_id"], TRANSACTION);
    assert_eq!(shown["auth_method"], "push_with_pin");
    assert_eq!(shown["secure_message"], SECURE_MESSAGE);
    assert_eq!(shown["signing_data"], SIGNING_DATA);
    assert_eq!(shown["number_choices"], json!([12, 47, 83]));
    let cached = phone
        .state_dir()
        .join("tx")
        .join(format!("{TRANSACTION}.json"));
    assert_eq!(mode(&cached), 0o600);

    // The server gives details once; the second show comes from the cache.
    let (exit, again, stderr) = phone.run(&["show", TRANSACTION]);
    assert_eq!(exit, 0, "{stderr}");
    assert_eq!(again, shown);

    // A wrong PIN: the server's refusal, its status and error code on stderr.
    let (exit, json, stderr) =
        phone.run(&["approve", TRANSACTION, "--pin", "1111", "--number", "47"]);
    assert_eq!((exit, json), (1, Value::Null));
    assert!(stderr.contains("HTTP 401 invalid_pin"), "{stderr}");
    assert!(stderr.contains("remaining_attempts"), "{stderr}");

    let (exit, json, stderr) =
        phone.run(&["approve", TRANSACTION, "--pin", "2468", "--number", "47"]);
    assert_eq!(exit, 0, "{stderr}");
    assert_eq!(
        json,
        json!({ "transaction_id": TRANSACTION, "status": "approved" })
    );
    let answers = fake.state.lock().unwrap().answers.clone();
    let last = answers.last().unwrap();
    assert_eq!(last["authenticator"], "pin");
    assert_eq!(last["number"], 47);

    // Details were fetched exactly once over the network.
    let requests = fake.state.lock().unwrap().requests.clone();
    let fetches = requests
        .iter()
        .filter(|r| *r == &format!("GET /device/v1/transactions/{TRANSACTION}"))
        .count();
    assert_eq!(fetches, 1, "{requests:?}");
}

#[test]
fn approve_fetches_details_itself_and_deny_sends_only_the_decision() {
    let (server, fake) = fake_device_api();
    let phone = DeviceCli::new(&server.url());
    phone.enroll(CODE, "bank-app", &["--pin", "2468"]);

    // No `show` first: approve fetches (and caches) the details for the signing data.
    let (exit, json, stderr) =
        phone.run(&["approve", TRANSACTION, "--pin", "2468", "--number", "12"]);
    assert_eq!(exit, 0, "{stderr}");
    assert_eq!(json["status"], "denied", "a wrong number pick denies");
    assert!(
        phone
            .state_dir()
            .join("tx")
            .join(format!("{TRANSACTION}.json"))
            .exists()
    );

    let (exit, json, stderr) = phone.run(&["deny", TRANSACTION]);
    assert_eq!(exit, 0, "{stderr}");
    assert_eq!(json["status"], "denied");
    let answers = fake.state.lock().unwrap().answers.clone();
    assert_eq!(
        answers.last().unwrap(),
        &json!({ "decision": "deny", "authenticator": "device" })
    );

    // A key the device never enrolled: a local, clear refusal.
    let (exit, _, stderr) = phone.run(&["approve", TRANSACTION, "--biometric"]);
    assert_eq!(exit, 1);
    assert!(stderr.contains("--biometric"), "{stderr}");
}

#[test]
fn register_push_prints_the_server_answer() {
    let (server, _fake) = fake_device_api();
    let phone = DeviceCli::new(&server.url());
    phone.enroll(CODE, "bank-app", &[]);
    let (exit, json, stderr) = phone.run(&[
        "register-push",
        "--app",
        "bank-app",
        "--version",
        "1.0",
        "--platform",
        "android",
        "--token",
        "fcm-token-1",
    ]);
    assert_eq!(exit, 0, "{stderr}");
    assert_eq!(
        json,
        json!({ "registered": true, "replaced_device_ids": [] })
    );
}
