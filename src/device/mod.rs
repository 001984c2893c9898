//! The reference phone client, `stepgate device`: what a phone app does in the device protocol
//! (`docs/device-protocol.md`), driven from the command line so scripts and tests can play the
//! phone. Owns the `device` subcommand's arguments, the commands (enroll, push registration,
//! pending, show, approve, deny, otp), which key answers for which flag, and the exit codes (0, 1 for
//! a refusal or failure, 2 for unusable arguments). Each command prints exactly one JSON object on
//! stdout; a failure prints one line on stderr and nothing on stdout.
//!
//! `state` keeps the keys and ids in the state directory, `client` speaks HTTP and signs
//! requests; every piece of cryptography comes from `domain::device_crypto`.
//!
//! May import: `domain` (plus external crates).

pub mod client;
pub mod state;

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, Subcommand};
use p256::SecretKey;
use p256::ecdsa::SigningKey;
use rand_core::{OsRng, RngCore};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::clock::Timestamp;
use crate::domain::device::{Authenticator, DeviceId, DeviceKeys, Platform, PublicKeyBytes};
use crate::domain::device_crypto::{self, CryptoError, SealedPayload};
use crate::domain::otp::{InvalidOtp, OtpCode};
use client::{ApiClient, ApiError, Signer};
use state::{DeviceState, KeyFile, StateDir, StateError, TransactionDetails};

/// Exit code for a refusal by the server or any other failure at run time.
const EXIT_FAILURE: u8 = 1;
/// Exit code for arguments that cannot be used (as clap's own).
const EXIT_BAD_ARGUMENTS: u8 = 2;
/// The device name sent at enrollment when `--name` is not given.
const DEFAULT_DEVICE_NAME: &str = "stepgate reference device";

/// `stepgate device --api URL --state DIR <command>`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The gateway's API base URL (its API listener), e.g. https://gate.example. Required to
    /// enroll; later commands default to the URL the device enrolled with.
    #[arg(long, env = "STEPGATE_DEVICE_API", value_name = "URL", value_parser = parse_api_url)]
    api: Option<String>,
    /// The device's state directory (keys and ids; created 0700 at enrollment).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// A PEM file of CA certificates to trust besides the system's (for a private CA).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Enroll with a one-time enrollment code; prints {"device_id","user_id"}.
    Enroll(EnrollArgs),
    /// Register the APNs/FCM token for an application version; prints the server's answer.
    RegisterPush {
        /// The application id (default: the one enrolled).
        #[arg(long)]
        app: Option<String>,
        /// The application version, as configured in applications[].versions.
        #[arg(long)]
        version: String,
        /// The push platform (default: the one enrolled).
        #[arg(long, value_name = "ios|android")]
        platform: Option<Platform>,
        /// The APNs device token or FCM registration token.
        #[arg(long)]
        token: Secret,
    },
    /// Drop the push registration; prints the server's answer.
    UnregisterPush,
    /// List the device's pending push transactions.
    Pending,
    /// Fetch (once; later from DIR/tx) and decrypt a transaction's details.
    Show {
        /// The transaction id.
        transaction: Uuid,
    },
    /// Approve a transaction with the key its method demands; prints the server's answer.
    Approve {
        /// The transaction id.
        transaction: Uuid,
        /// Sign with the key derived from this PIN.
        #[arg(long, conflicts_with_all = ["biometric", "custom_authenticator"])]
        pin: Option<Secret>,
        /// Sign with the biometric key.
        #[arg(long, conflicts_with = "custom_authenticator")]
        biometric: bool,
        /// Sign with the custom-authenticator key.
        #[arg(long)]
        custom_authenticator: bool,
        /// The number picked, when the transaction uses number matching.
        #[arg(long)]
        number: Option<u8>,
    },
    /// Deny a transaction; prints the server's answer.
    Deny {
        /// The transaction id.
        transaction: Uuid,
        /// "This wasn't me": the user did not ask for this; push step-ups are blocked for the
        /// user for a while, and the portal is told.
        #[arg(long)]
        report: bool,
    },
    /// Submit a scanned OTP code (the code, or the deep link its QR code carries) and approve
    /// the sign-in it stands for (or deny it with --deny); prints the server's answer.
    Otp {
        /// The OTP code or deep link, e.g. stepgate://otp?c=... (a code may start with '-').
        #[arg(allow_hyphen_values = true)]
        code: Secret,
        /// Deny instead of approving.
        #[arg(long)]
        deny: bool,
    },
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// The enrollment code from the portal (or its QR code).
    #[arg(long)]
    code: Secret,
    /// The configured application id, e.g. bank-app.
    #[arg(long)]
    application: String,
    /// The device name shown to the user.
    #[arg(long, default_value = DEFAULT_DEVICE_NAME)]
    name: String,
    #[arg(long, default_value = "android", value_name = "ios|android")]
    platform: Platform,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    os_version: Option<String>,
    /// Enroll a PIN key derived from this PIN (the PIN and its public key are not stored).
    #[arg(long)]
    pin: Option<Secret>,
    /// Enroll a biometric key.
    #[arg(long)]
    biometric: bool,
    /// Enroll a custom-authenticator key.
    #[arg(long)]
    custom_authenticator: bool,
}

impl DeviceCommand {
    fn name(&self) -> &'static str {
        match self {
            DeviceCommand::Enroll(_) => "enroll",
            DeviceCommand::RegisterPush { .. } => "register-push",
            DeviceCommand::UnregisterPush => "unregister-push",
            DeviceCommand::Pending => "pending",
            DeviceCommand::Show { .. } => "show",
            DeviceCommand::Approve { .. } => "approve",
            DeviceCommand::Deny { .. } => "deny",
            DeviceCommand::Otp { .. } => "otp",
        }
    }
}

/// A command-line value that must never show in `Debug` output: a PIN, a push token, an
/// enrollment code.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

fn parse_api_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected an http:// or https:// URL".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("expected a base URL without query or fragment".to_owned());
    }
    Ok(text.to_owned())
}

/// Why a command failed. The message is one line for stderr.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("no API URL: give --api URL (or STEPGATE_DEVICE_API)")]
    NoApi,
    #[error("{} holds no {} (the device enrolled without it: {hint})",
        dir.display(), file)]
    KeyNotEnrolled {
        dir: PathBuf,
        file: &'static str,
        hint: &'static str,
    },
    #[error("the PIN key cannot be derived: {0}")]
    Pin(CryptoError),
    #[error("unexpected answer from the server: {0}")]
    InvalidAnswer(String),
    #[error(
        "transaction {transaction}: cannot decrypt its details with this device's encryption key"
    )]
    Decrypt { transaction: Uuid },
    #[error(
        "transaction {transaction}: its details were fetched before but are not cached in {}, \
         and the server gives them once (HTTP 410 already_fetched)", dir.display()
    )]
    DetailsGone { transaction: Uuid, dir: PathBuf },
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("{0}")]
    InvalidOtp(InvalidOtp),
}

impl DeviceError {
    fn exit_code(&self) -> u8 {
        match self {
            DeviceError::NoApi | DeviceError::InvalidOtp(_) => EXIT_BAD_ARGUMENTS,
            _ => EXIT_FAILURE,
        }
    }
}

/// Runs `stepgate device ...`: one JSON object on stdout, or one line on stderr and exit 1 (2
/// for unusable arguments).
pub fn main(args: DeviceArgs) -> ExitCode {
    let command = args.command.name();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DeviceError::Runtime)
        .and_then(|runtime| runtime.block_on(execute(args)));
    match outcome {
        Ok(output) => {
            let mut stdout = io::stdout().lock();
            match writeln!(stdout, "{output}").and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    let _ = writeln!(io::stderr(), "stepgate device {command}: stdout: {error}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Err(error) => {
            let _ = writeln!(io::stderr(), "stepgate device {command}: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs one command and returns what it prints.
pub async fn execute(args: DeviceArgs) -> Result<Value, DeviceError> {
    let DeviceArgs {
        api,
        state,
        ca_file,
        command,
    } = args;
    let ca_file = ca_file.as_deref();
    let open = || Enrolled::open(&state, api.as_deref(), ca_file);
    match command {
        DeviceCommand::Enroll(options) => {
            let api = api.as_deref().ok_or(DeviceError::NoApi)?;
            enroll(api, ca_file, &state, options).await
        }
        DeviceCommand::RegisterPush {
            app,
            version,
            platform,
            token,
        } => {
            open()?
                .register_push(app.as_deref(), &version, platform, &token)
                .await
        }
        DeviceCommand::UnregisterPush => {
            let answer = open()?
                .request(Method::DELETE, PUSH_REGISTRATION_PATH, None)
                .await?;
            Ok(if is_empty_object(&answer) {
                json!({ "registered": false })
            } else {
                answer
            })
        }
        DeviceCommand::Pending => {
            let transactions = open()?.pending().await?;
            Ok(json!({ "transactions": transactions }))
        }
        DeviceCommand::Show { transaction } => {
            let details = open()?.details(transaction).await?;
            Ok(show_output(&Shown::of(details)))
        }
        DeviceCommand::Approve {
            transaction,
            pin,
            biometric,
            custom_authenticator,
            number,
        } => {
            let choice = AnswerAuthenticator::from_flags(pin, biometric, custom_authenticator);
            open()?.approve(transaction, &choice, number).await
        }
        DeviceCommand::Deny {
            transaction,
            report,
        } => open()?.deny(transaction, report).await,
        DeviceCommand::Otp { code, deny } => {
            // Checked before anything is sent: a scan that is no code names no transaction.
            let code = OtpCode::parse_scanned(code.expose()).map_err(DeviceError::InvalidOtp)?;
            let body = json!({
                "otp": code.encode(),
                "decision": if deny { "deny" } else { "approve" },
            });
            open()?.request(Method::POST, OTP_PATH, Some(&body)).await
        }
    }
}

// ---- the library face ------------------------------------------------------------------------

/// The reference client as a library, for a phone screen in front of it (the demo's phone
/// page): the same requests, keys and checks as the commands, typed answers instead of printed
/// JSON. Answers with the device key only (`push`), as a phone without a PIN does.
pub struct Phone {
    device: Enrolled,
}

/// One pending push transaction, as the device's pending list gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingTransaction {
    pub transaction_id: String,
    #[serde(default)]
    pub message: Option<String>,
    pub auth_method: String,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

/// What a phone shows before the user answers: the details with the secure message and the
/// signing data decoded to text.
#[derive(Debug, Clone)]
pub struct Shown {
    pub details: TransactionDetails,
    pub secure_message: Option<String>,
    pub signing_data: Option<String>,
}

impl Phone {
    /// Enrolls a new device in `state` (which must not hold one) with a one-time code.
    pub async fn enroll(
        api: &str,
        state: &Path,
        code: &str,
        application: &str,
        name: &str,
    ) -> Result<Self, DeviceError> {
        let options = EnrollArgs {
            code: Secret::new(code),
            application: application.to_owned(),
            name: name.to_owned(),
            platform: Platform::Android,
            model: None,
            os_version: None,
            pin: None,
            biometric: false,
            custom_authenticator: false,
        };
        enroll(api, None, state, options).await?;
        Self::open(state)
    }

    /// The device enrolled in `state`.
    pub fn open(state: &Path) -> Result<Self, DeviceError> {
        Ok(Self {
            device: Enrolled::open(state, None, None)?,
        })
    }

    pub fn user_id(&self) -> &str {
        &self.device.state.user_id
    }

    /// Registers `token` for push with the enrolled application's `version`.
    pub async fn register_push(&self, version: &str, token: &Secret) -> Result<(), DeviceError> {
        self.device
            .register_push(None, version, None, token)
            .await
            .map(drop)
    }

    pub async fn pending(&self) -> Result<Vec<PendingTransaction>, DeviceError> {
        self.device.pending().await
    }

    /// The details (fetched once, then from the state directory), decoded for the screen.
    pub async fn show(&self, transaction: Uuid) -> Result<Shown, DeviceError> {
        Ok(Shown::of(self.device.details(transaction).await?))
    }

    /// Approves with the device key; `number` is the typed or picked number under number
    /// matching. Returns the server's `status` (`approved`, or `failed` for a wrong number).
    pub async fn approve(
        &self,
        transaction: Uuid,
        number: Option<u8>,
    ) -> Result<String, DeviceError> {
        let answer = self
            .device
            .approve(transaction, &AnswerAuthenticator::Device, number)
            .await?;
        answer_status(&answer)
    }

    /// Denies; `report` says "this wasn't me". Returns the server's `status`.
    pub async fn deny(&self, transaction: Uuid, report: bool) -> Result<String, DeviceError> {
        let answer = self.device.deny(transaction, report).await?;
        answer_status(&answer)
    }
}

impl Shown {
    fn of(details: TransactionDetails) -> Self {
        Self {
            secure_message: decoded_text(details.secure_message.as_deref()),
            signing_data: decoded_text(details.signing_data.as_deref()),
            details,
        }
    }
}

fn decoded_text(field: Option<&str>) -> Option<String> {
    field.map(|encoded| {
        let bytes = URL_SAFE_NO_PAD.decode(encoded).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn answer_status(answer: &Value) -> Result<String, DeviceError> {
    answer
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| DeviceError::InvalidAnswer(format!("no status in {answer}")))
}

const PUSH_REGISTRATION_PATH: &str = "/device/v1/push-registration";
const TRANSACTIONS_PATH: &str = "/device/v1/transactions";
const OTP_PATH: &str = "/device/v1/otp";

// ---- enroll ----------------------------------------------------------------------------------

#[derive(Serialize)]
struct EnrollRequest<'a> {
    code: &'a str,
    application: &'a str,
    name: &'a str,
    platform: Platform,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_version: Option<&'a str>,
    keys: &'a DeviceKeys,
    proof: String,
}

#[derive(Deserialize)]
struct EnrollAnswer {
    device_id: DeviceId,
    user_id: String,
    server_public_key: PublicKeyBytes,
}

async fn enroll(
    api: &str,
    ca_file: Option<&Path>,
    state: &Path,
    options: EnrollArgs,
) -> Result<Value, DeviceError> {
    let client = ApiClient::new(api, ca_file)?;
    // Refuse before the code is spent: an enrolled directory's keys must not be overwritten.
    let dir = StateDir::create(state)?;
    // The proof signs the code exactly as sent; sent in its canonical form, so the server and
    // the proof agree however the user typed it. Not a code at all: sent as typed, refused there.
    let code = device_crypto::normalize_enrollment_code(options.code.expose())
        .unwrap_or_else(|| options.code.expose().trim().to_owned());

    let signing = SecretKey::random(&mut OsRng);
    let encryption = SecretKey::random(&mut OsRng);
    let biometric = options.biometric.then(|| SecretKey::random(&mut OsRng));
    let custom = options
        .custom_authenticator
        .then(|| SecretKey::random(&mut OsRng));
    let pin = match &options.pin {
        Some(pin) => {
            let mut salt = [0u8; 16];
            OsRng.fill_bytes(&mut salt);
            let key =
                device_crypto::derive_pin_key(pin.expose(), &salt).map_err(DeviceError::Pin)?;
            Some((salt, device_crypto::signing_public_key(&key)))
        }
        None => None,
    };
    let public = |key: &SecretKey| device_crypto::public_key_bytes(&key.public_key());
    let keys = DeviceKeys {
        signing: public(&signing),
        encryption: public(&encryption),
        pin: pin.as_ref().map(|(_, key)| key.clone()),
        biometric: biometric.as_ref().map(public),
        custom_authenticator: custom.as_ref().map(public),
    };
    let proof = device_crypto::sign(
        &SigningKey::from(&signing),
        device_crypto::enroll_statement(&code).as_bytes(),
    );
    let request = EnrollRequest {
        code: &code,
        application: &options.application,
        name: &options.name,
        platform: options.platform,
        model: options.model.as_deref(),
        os_version: options.os_version.as_deref(),
        keys: &keys,
        proof,
    };
    let body = serde_json::to_value(&request)
        .map_err(|error| DeviceError::InvalidAnswer(error.to_string()))?;
    let answer: EnrollAnswer = parse_answer(client.enroll(&body).await?)?;
    device_crypto::parse_public_key(&answer.server_public_key).map_err(|_| {
        DeviceError::InvalidAnswer("server_public_key is not a P-256 public key".to_owned())
    })?;

    dir.save_key(KeyFile::Signing, &signing)?;
    dir.save_key(KeyFile::Encryption, &encryption)?;
    if let Some(key) = &biometric {
        dir.save_key(KeyFile::Biometric, key)?;
    }
    if let Some(key) = &custom {
        dir.save_key(KeyFile::CustomAuthenticator, key)?;
    }
    if let Some((salt, _)) = &pin {
        dir.save_pin_salt(salt)?;
    }
    // Last: its presence is what "enrolled" means.
    dir.save_device(&DeviceState {
        device_id: answer.device_id.clone(),
        user_id: answer.user_id.clone(),
        api: api.to_owned(),
        server_public_key: answer.server_public_key,
        application: options.application,
        platform: options.platform,
    })?;
    Ok(json!({ "device_id": answer.device_id, "user_id": answer.user_id }))
}

// ---- the enrolled device ---------------------------------------------------------------------

/// Which key authorises an approval, from the flags given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerAuthenticator {
    /// No flag: the device's signing key alone (method `push`), no `authenticator_signature`.
    Device,
    Pin(Secret),
    Biometric,
    CustomAuthenticator,
}

impl AnswerAuthenticator {
    /// clap already refuses more than one of the flags; should several arrive anyway, the PIN
    /// wins (the strongest factor, and the fallback of the other two).
    pub fn from_flags(pin: Option<Secret>, biometric: bool, custom_authenticator: bool) -> Self {
        match (pin, biometric, custom_authenticator) {
            (Some(pin), _, _) => AnswerAuthenticator::Pin(pin),
            (None, true, _) => AnswerAuthenticator::Biometric,
            (None, false, true) => AnswerAuthenticator::CustomAuthenticator,
            (None, false, false) => AnswerAuthenticator::Device,
        }
    }

    pub fn authenticator(&self) -> Authenticator {
        match self {
            AnswerAuthenticator::Device => Authenticator::Device,
            AnswerAuthenticator::Pin(_) => Authenticator::Pin,
            AnswerAuthenticator::Biometric => Authenticator::Biometric,
            AnswerAuthenticator::CustomAuthenticator => Authenticator::CustomAuthenticator,
        }
    }
}

/// The key that signs an answer (and the signing data) for `choice`.
pub fn answer_key(dir: &StateDir, choice: &AnswerAuthenticator) -> Result<SigningKey, DeviceError> {
    let stored = |which: KeyFile, hint: &'static str| -> Result<SigningKey, DeviceError> {
        dir.load_key(which)?
            .map(SigningKey::from)
            .ok_or_else(|| DeviceError::KeyNotEnrolled {
                dir: dir.root().to_owned(),
                file: which.file_name(),
                hint,
            })
    };
    match choice {
        AnswerAuthenticator::Device => stored(KeyFile::Signing, "the state is incomplete"),
        AnswerAuthenticator::Biometric => stored(KeyFile::Biometric, "enroll with --biometric"),
        AnswerAuthenticator::CustomAuthenticator => stored(
            KeyFile::CustomAuthenticator,
            "enroll with --custom-authenticator",
        ),
        AnswerAuthenticator::Pin(pin) => {
            let salt = dir
                .load_pin_salt()?
                .ok_or_else(|| DeviceError::KeyNotEnrolled {
                    dir: dir.root().to_owned(),
                    file: "pin.salt",
                    hint: "enroll with --pin",
                })?;
            device_crypto::derive_pin_key(pin.expose(), &salt).map_err(DeviceError::Pin)
        }
    }
}

/// An enrolled device: its state, its signing key and a client for its API.
struct Enrolled {
    dir: StateDir,
    state: DeviceState,
    signing: SigningKey,
    client: ApiClient,
}

#[derive(Deserialize)]
struct PendingList {
    transactions: Vec<PendingTransaction>,
}

#[derive(Deserialize)]
struct DetailsAnswer {
    transaction_id: Uuid,
    auth_method: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
    #[serde(default)]
    number_choices: Option<Vec<u8>>,
    /// `pick` (choose among `number_choices`), `type` (type the number the requester shows),
    /// or absent (no number matching).
    #[serde(default)]
    number_matching: Option<String>,
    #[serde(default)]
    encrypted: Option<SealedPayload>,
}

/// The plaintext of `encrypted`: both base64url.
#[derive(Deserialize)]
struct SecurePayload {
    #[serde(default)]
    secure_message: Option<String>,
    #[serde(default)]
    signing_data: Option<String>,
}

#[derive(Serialize)]
struct AnswerRequest {
    decision: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    report: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    number: Option<u8>,
    authenticator: Authenticator,
    #[serde(skip_serializing_if = "Option::is_none")]
    authenticator_signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_signature: Option<String>,
}

impl Enrolled {
    fn open(state: &Path, api: Option<&str>, ca_file: Option<&Path>) -> Result<Self, DeviceError> {
        let (dir, state) = StateDir::open(state)?;
        let signing = answer_key(&dir, &AnswerAuthenticator::Device)?;
        let client = ApiClient::new(api.unwrap_or(&state.api), ca_file)?;
        Ok(Self {
            dir,
            state,
            signing,
            client,
        })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DeviceError> {
        let signer = Signer {
            device_id: &self.state.device_id,
            key: &self.signing,
        };
        Ok(self.client.signed(method, path, body, &signer).await?)
    }

    /// `PUT` the push registration: the enrolled application and platform unless others are
    /// given. Returns the server's answer.
    async fn register_push(
        &self,
        application: Option<&str>,
        version: &str,
        platform: Option<Platform>,
        token: &Secret,
    ) -> Result<Value, DeviceError> {
        let body = json!({
            "application": application.unwrap_or(&self.state.application),
            "version": version,
            "platform": platform.unwrap_or(self.state.platform),
            "token": token.expose(),
        });
        self.request(Method::PUT, PUSH_REGISTRATION_PATH, Some(&body))
            .await
    }

    async fn pending(&self) -> Result<Vec<PendingTransaction>, DeviceError> {
        let answer = self.request(Method::GET, TRANSACTIONS_PATH, None).await?;
        Ok(parse_answer::<PendingList>(answer)?.transactions)
    }

    /// The details from the cache, else fetched (once), decrypted and cached.
    async fn details(&self, transaction: Uuid) -> Result<TransactionDetails, DeviceError> {
        if let Some(cached) = self.dir.load_transaction(&transaction)? {
            return Ok(cached);
        }
        let path = format!("{TRANSACTIONS_PATH}/{transaction}");
        let answer = match self.request(Method::GET, &path, None).await {
            Err(DeviceError::Api(error)) if error.server_error() == Some("already_fetched") => {
                return Err(DeviceError::DetailsGone {
                    transaction,
                    dir: self.dir.root().to_owned(),
                });
            }
            other => other?,
        };
        let answer: DetailsAnswer = parse_answer(answer)?;
        if answer.transaction_id != transaction {
            return Err(DeviceError::InvalidAnswer(format!(
                "asked for transaction {transaction}, got {}",
                answer.transaction_id
            )));
        }
        let secure = match &answer.encrypted {
            Some(sealed) => self.open_sealed(transaction, sealed)?,
            None => SecurePayload {
                secure_message: None,
                signing_data: None,
            },
        };
        let details = TransactionDetails {
            transaction_id: transaction,
            auth_method: answer.auth_method,
            message: answer.message,
            expires_at: answer.expires_at,
            number_choices: answer.number_choices,
            number_matching: answer.number_matching,
            secure_message: secure.secure_message,
            signing_data: secure.signing_data,
        };
        self.dir.save_transaction(&details)?;
        Ok(details)
    }

    fn open_sealed(
        &self,
        transaction: Uuid,
        sealed: &SealedPayload,
    ) -> Result<SecurePayload, DeviceError> {
        let decrypt_error = || DeviceError::Decrypt { transaction };
        let encryption =
            self.dir
                .load_key(KeyFile::Encryption)?
                .ok_or_else(|| DeviceError::KeyNotEnrolled {
                    dir: self.dir.root().to_owned(),
                    file: KeyFile::Encryption.file_name(),
                    hint: "the state is incomplete",
                })?;
        let plaintext = device_crypto::decrypt_from_server(
            &encryption,
            &self.state.server_public_key,
            &transaction.to_string(),
            sealed,
        )
        .map_err(|_| decrypt_error())?;
        let payload: SecurePayload =
            serde_json::from_slice(&plaintext).map_err(|_| decrypt_error())?;
        for field in [&payload.secure_message, &payload.signing_data]
            .into_iter()
            .flatten()
        {
            URL_SAFE_NO_PAD.decode(field).map_err(|_| {
                DeviceError::InvalidAnswer("the secure payload is not base64url".to_owned())
            })?;
        }
        Ok(payload)
    }

    async fn approve(
        &self,
        transaction: Uuid,
        choice: &AnswerAuthenticator,
        number: Option<u8>,
    ) -> Result<Value, DeviceError> {
        // The key first: a missing key or PIN salt fails before the one-time fetch is spent.
        let key = answer_key(&self.dir, choice)?;
        let details = self.details(transaction).await?;
        // What a phone's screen allows: a pick among the offered numbers, or a typed one.
        match (details.number_matching.as_deref(), number) {
            (Some(_), None) => {
                return Err(DeviceError::InvalidAnswer(
                    "this transaction uses number matching: pass --number with the number the requester shows".to_owned(),
                ));
            }
            (Some("pick"), Some(picked))
                if !details
                    .number_choices
                    .as_ref()
                    .is_some_and(|choices| choices.contains(&picked)) =>
            {
                return Err(DeviceError::InvalidAnswer(format!(
                    "{picked} is not among the numbers offered ({:?})",
                    details.number_choices.as_deref().unwrap_or_default()
                )));
            }
            _ => {}
        }
        let signing_signature = match &details.signing_data {
            Some(data) => {
                let bytes = URL_SAFE_NO_PAD.decode(data).map_err(|_| {
                    DeviceError::InvalidAnswer("the signing data is not base64url".to_owned())
                })?;
                Some(device_crypto::sign(&key, &bytes))
            }
            None => None,
        };
        let authenticator = choice.authenticator();
        let authenticator_signature = (authenticator != Authenticator::Device).then(|| {
            let statement =
                device_crypto::answer_statement(&transaction.to_string(), "approve", number);
            device_crypto::sign(&key, statement.as_bytes())
        });
        let body = AnswerRequest {
            report: false,
            decision: "approve",
            number,
            authenticator,
            authenticator_signature,
            signing_signature,
        };
        self.answer(transaction, &body).await
    }

    async fn deny(&self, transaction: Uuid, report: bool) -> Result<Value, DeviceError> {
        // A phone shows the details before the user denies; a deny needs none of them, so
        // details fetched elsewhere do not stop it.
        match self.details(transaction).await {
            Ok(_) | Err(DeviceError::DetailsGone { .. }) => {}
            Err(error) => return Err(error),
        }
        let body = AnswerRequest {
            decision: "deny",
            report,
            number: None,
            authenticator: Authenticator::Device,
            authenticator_signature: None,
            signing_signature: None,
        };
        self.answer(transaction, &body).await
    }

    async fn answer(&self, transaction: Uuid, body: &AnswerRequest) -> Result<Value, DeviceError> {
        let body = serde_json::to_value(body)
            .map_err(|error| DeviceError::InvalidAnswer(error.to_string()))?;
        let path = format!("{TRANSACTIONS_PATH}/{transaction}/answer");
        self.request(Method::POST, &path, Some(&body)).await
    }
}

/// What `show` prints: the secure message and signing data as text.
fn show_output(shown: &Shown) -> Value {
    let details = &shown.details;
    json!({
        "transaction_id": details.transaction_id,
        "auth_method": details.auth_method,
        "message": details.message,
        "secure_message": shown.secure_message,
        "signing_data": shown.signing_data,
        "number_choices": details.number_choices,
        "number_matching": details.number_matching,
        "expires_at": details.expires_at,
    })
}

fn parse_answer<T: serde::de::DeserializeOwned>(answer: Value) -> Result<T, DeviceError> {
    serde_json::from_value(answer).map_err(|error| DeviceError::InvalidAnswer(error.to_string()))
}

fn is_empty_object(value: &Value) -> bool {
    value.as_object().is_some_and(serde_json::Map::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolled_dir(
        biometric: bool,
        custom: bool,
        pin: Option<&str>,
    ) -> (tempfile::TempDir, StateDir, Option<PublicKeyBytes>) {
        let scratch = tempfile::tempdir().unwrap();
        let dir = StateDir::create(scratch.path()).unwrap();
        dir.save_key(KeyFile::Signing, &SecretKey::random(&mut OsRng))
            .unwrap();
        if biometric {
            dir.save_key(KeyFile::Biometric, &SecretKey::random(&mut OsRng))
                .unwrap();
        }
        if custom {
            dir.save_key(KeyFile::CustomAuthenticator, &SecretKey::random(&mut OsRng))
                .unwrap();
        }
        let pin_public = pin.map(|pin| {
            let salt = [3u8; 16];
            dir.save_pin_salt(&salt).unwrap();
            device_crypto::signing_public_key(&device_crypto::derive_pin_key(pin, &salt).unwrap())
        });
        (scratch, dir, pin_public)
    }

    fn public_of(dir: &StateDir, which: KeyFile) -> PublicKeyBytes {
        device_crypto::public_key_bytes(&dir.load_key(which).unwrap().unwrap().public_key())
    }

    #[test]
    fn each_flag_selects_its_key() {
        let (_scratch, dir, pin_public) = enrolled_dir(true, true, Some("2468"));
        let selected = |choice: AnswerAuthenticator| {
            device_crypto::signing_public_key(&answer_key(&dir, &choice).unwrap())
        };
        assert_eq!(
            selected(AnswerAuthenticator::from_flags(None, false, false)),
            public_of(&dir, KeyFile::Signing)
        );
        assert_eq!(
            selected(AnswerAuthenticator::from_flags(None, true, false)),
            public_of(&dir, KeyFile::Biometric)
        );
        assert_eq!(
            selected(AnswerAuthenticator::from_flags(None, false, true)),
            public_of(&dir, KeyFile::CustomAuthenticator)
        );
        let with_pin = AnswerAuthenticator::from_flags(Some(Secret::new("2468")), false, false);
        assert_eq!(with_pin.authenticator(), Authenticator::Pin);
        assert_eq!(Some(selected(with_pin)), pin_public);
        let wrong_pin = AnswerAuthenticator::Pin(Secret::new("1357"));
        assert_ne!(Some(selected(wrong_pin)), pin_public);
    }

    #[test]
    fn the_flags_name_the_authenticator_sent() {
        assert_eq!(
            AnswerAuthenticator::from_flags(None, false, false).authenticator(),
            Authenticator::Device
        );
        assert_eq!(
            AnswerAuthenticator::from_flags(None, true, false).authenticator(),
            Authenticator::Biometric
        );
        assert_eq!(
            AnswerAuthenticator::from_flags(None, false, true).authenticator(),
            Authenticator::CustomAuthenticator
        );
    }

    #[test]
    fn a_key_not_enrolled_is_a_clear_error() {
        let (_scratch, dir, _) = enrolled_dir(false, false, None);
        for (choice, hint) in [
            (AnswerAuthenticator::Biometric, "--biometric"),
            (
                AnswerAuthenticator::CustomAuthenticator,
                "--custom-authenticator",
            ),
            (AnswerAuthenticator::Pin(Secret::new("1234")), "--pin"),
        ] {
            let error = answer_key(&dir, &choice).unwrap_err();
            assert!(error.to_string().contains(hint), "{error}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let choice = AnswerAuthenticator::Pin(Secret::new("918273"));
        assert!(!format!("{choice:?}").contains("918273"));
        assert!("".parse::<Secret>().is_err());
    }

    #[test]
    fn show_prints_the_secure_parts_as_text() {
        let details = TransactionDetails {
            transaction_id: Uuid::new_v4(),
            auth_method: "push".to_owned(),
            message: None,
            expires_at: None,
            number_choices: None,
            number_matching: None,
            secure_message: Some(URL_SAFE_NO_PAD.encode("Pay 10 EUR")),
            signing_data: None,
        };
        let id = details.transaction_id;
        let shown = show_output(&Shown::of(details));
        assert_eq!(shown["secure_message"], "Pay 10 EUR");
        assert_eq!(shown["signing_data"], Value::Null);
        assert_eq!(shown["transaction_id"], id.to_string());
    }

    #[test]
    fn api_urls_are_checked_like_arguments() {
        assert!(parse_api_url("http://127.0.0.1:8081").is_ok());
        assert!(parse_api_url("127.0.0.1:8081").is_err());
        assert!(parse_api_url("ftp://gate.example").is_err());
    }
}
