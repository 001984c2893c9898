//! A fake APNs provider API: HTTP/2 only, over TLS with a certificate for 127.0.0.1 issued by a
//! test CA (`ca_file`), both made by `openssl`. It serves `POST /3/device/{token}` as Apple does:
//! the `authorization: bearer` provider token must be an ES256 JWT with `kid` = the key id,
//! `iss` = the team id and a fresh `iat`, verified with the public half of the test `.p8` key;
//! `apns-topic` must be the expected bundle id; answers are Apple's (`200` with an `apns-id`,
//! errors as `{"reason": ...}`). Every accepted push is recorded. It can be told to answer 410
//! `Unregistered` for a token, 503 for the next N requests, or `ExpiredProviderToken` once.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::push_keys::{KEY_ID, PushKeys, TEAM_ID, openssl};

/// APNs refuses payloads above 4 KiB.
const MAX_PAYLOAD: usize = 4096;

/// One push the fake accepted.
#[derive(Debug, Clone)]
pub struct ApnsPush {
    pub token: String,
    /// Lower-case header names.
    pub headers: BTreeMap<String, String>,
    pub payload: Value,
    pub version: Version,
}

#[derive(Default)]
struct Behaviour {
    accepted: Vec<ApnsPush>,
    /// Requests received, accepted or not.
    requests: usize,
    unregistered: HashSet<String>,
    unavailable_for: usize,
    expire_next_token: bool,
    /// Distinct provider tokens seen on accepted pushes.
    provider_tokens: Vec<String>,
}

struct Config {
    bundle_id: String,
    key: DecodingKey,
}

type Shared = Arc<(Config, Mutex<Behaviour>)>;

pub struct FakeApns {
    shared: Shared,
    addr: SocketAddr,
    dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApns {
    /// Serves pushes for `bundle_id`, signed with `keys`' APNs key.
    pub fn start(keys: &PushKeys, bundle_id: &str) -> Self {
        let public = std::fs::read(keys.apns_public_key()).expect("apns public key");
        let config = Config {
            bundle_id: bundle_id.to_owned(),
            key: DecodingKey::from_ec_pem(&public).expect("EC public key"),
        };
        let shared: Shared = Arc::new((config, Mutex::new(Behaviour::default())));
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = tls_config(dir.path());
        let router = Router::new()
            .route("/3/device/{token}", post(push))
            .with_state(shared.clone());

        let socket = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        socket.set_nonblocking(true).expect("non-blocking socket");
        let addr = socket.local_addr().expect("local address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake apns runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(socket).expect("tokio listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
                let serve = async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let acceptor = acceptor.clone();
                        let router = router.clone();
                        tokio::spawn(async move {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let service = hyper_util::service::TowerToHyperService::new(router);
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop => {}
                }
            });
        });
        Self {
            shared,
            addr,
            dir,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:port`, for `push_configs[].endpoint`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    #[allow(dead_code)]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The test CA that issued the fake's certificate, for `push_configs[].ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Every accepted push, oldest first.
    pub fn received(&self) -> Vec<ApnsPush> {
        self.lock().accepted.clone()
    }

    /// Requests received, including refused ones.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Distinct provider tokens (JWTs) that accepted pushes carried, in first-use order.
    pub fn provider_tokens(&self) -> Vec<String> {
        self.lock().provider_tokens.clone()
    }

    /// From now on `token` answers 410 `Unregistered`.
    pub fn unregister(&self, token: &str) {
        self.lock().unregistered.insert(token.to_owned());
    }

    /// The next `n` requests answer 503 `ServiceUnavailable`.
    pub fn fail_next(&self, n: usize) {
        self.lock().unavailable_for = n;
    }

    /// The next request answers 403 `ExpiredProviderToken` whatever its token.
    #[allow(dead_code)]
    pub fn expire_next_token(&self) {
        self.lock().expire_next_token = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.shared.1.lock().expect("fake apns state")
    }
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A CA and a certificate for 127.0.0.1 in `dir`; the server speaks only h2, as APNs does.
fn tls_config(dir: &Path) -> rustls::ServerConfig {
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write ext");
    openssl(
        dir,
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=stepgate-apns-test-ca -keyout ca.key -out ca.pem",
    );
    openssl(
        dir,
        "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out server.csr",
    );
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out cert.pem",
    );
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .expect("cert.pem")
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).expect("key.pem");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

fn reason(status: StatusCode, reason: &str) -> Response {
    let mut body = json!({ "reason": reason });
    if status == StatusCode::GONE {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        body["timestamp"] = json!(millis);
    }
    (
        status,
        [("apns-id", uuid::Uuid::new_v4().to_string())],
        axum::Json(body),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: u64,
}

/// Apple's checks of the provider token, in Apple's words.
fn check_provider_token(config: &Config, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let Some(jwt) = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("bearer ")
                .or(value.strip_prefix("Bearer "))
        })
    else {
        return Err(Box::new(reason(
            StatusCode::FORBIDDEN,
            "MissingProviderToken",
        )));
    };
    let invalid = || Box::new(reason(StatusCode::FORBIDDEN, "InvalidProviderToken"));
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| invalid())?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(KEY_ID) {
        return Err(invalid());
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<ProviderClaims>(jwt, &config.key, &validation)
        .map_err(|_| invalid())?
        .claims;
    if claims.iss != TEAM_ID {
        return Err(invalid());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // Apple refuses tokens older than an hour; allow the clock a little skew the other way.
    if claims.iat + 3600 < now || claims.iat > now + 300 {
        return Err(Box::new(reason(
            StatusCode::FORBIDDEN,
            "ExpiredProviderToken",
        )));
    }
    Ok(jwt.to_owned())
}

async fn push(
    State(shared): State<Shared>,
    UrlPath(token): UrlPath<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (config, behaviour) = &*shared;
    {
        let mut state = behaviour.lock().expect("fake apns state");
        state.requests += 1;
        if state.unavailable_for > 0 {
            state.unavailable_for -= 1;
            return reason(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        }
        if std::mem::take(&mut state.expire_next_token) {
            return reason(StatusCode::FORBIDDEN, "ExpiredProviderToken");
        }
    }
    let jwt = match check_provider_token(config, &headers) {
        Ok(jwt) => jwt,
        Err(refusal) => return *refusal,
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    match header("apns-topic") {
        None => return reason(StatusCode::BAD_REQUEST, "MissingTopic"),
        Some(topic) if topic != config.bundle_id => {
            return reason(StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic");
        }
        Some(_) => {}
    }
    if !matches!(
        header("apns-push-type"),
        Some("alert" | "background" | "voip")
    ) {
        return reason(StatusCode::BAD_REQUEST, "InvalidPushType");
    }
    if !matches!(header("apns-priority"), None | Some("5" | "10" | "1")) {
        return reason(StatusCode::BAD_REQUEST, "BadPriority");
    }
    if header("apns-expiration").is_some_and(|value| value.parse::<u64>().is_err()) {
        return reason(StatusCode::BAD_REQUEST, "BadExpirationDate");
    }
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reason(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    if body.len() > MAX_PAYLOAD {
        return reason(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(payload @ Value::Object(_)) if payload.get("aps").is_some_and(Value::is_object) => {
            payload
        }
        _ => return reason(StatusCode::BAD_REQUEST, "PayloadEmpty"),
    };
    let mut state = behaviour.lock().expect("fake apns state");
    if state.unregistered.contains(&token) {
        return reason(StatusCode::GONE, "Unregistered");
    }
    if !state.provider_tokens.contains(&jwt) {
        state.provider_tokens.push(jwt);
    }
    state.accepted.push(ApnsPush {
        token,
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        payload,
        version,
    });
    let apns_id = header("apns-id")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    (StatusCode::OK, [("apns-id", apns_id)]).into_response()
}
