//! The command line: `run`, `validate`, `check-policy`, `demo`, `device`, `version`, and the exit codes (64 for a bad
//! config, as EX_USAGE; 1 for a failure at run time).
//!
//! May import: everything (wiring only).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config::{self, ConfigError, env::ProcessEnv};
use crate::demo;
use crate::device;
use crate::domain::policy::RequestFacts;
use crate::proxy::facts::RequestView;

/// Exit code for a configuration that does not load.
pub const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "stepgate",
    version,
    about = "Step-up (mobile) authentication gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "config.yaml", env = "STEPGATE_CONFIG")]
        config: PathBuf,
    },
    /// Check configuration files and print every problem (exit code 64 if any).
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print which policy a request would match, and why, and what would happen to it.
    CheckPolicy {
        /// The HTTP method, e.g. POST.
        method: String,
        /// The full URL, e.g. https://bank.example/transfer.
        url: String,
        /// The client address the request comes from.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header", value_name = "K:V")]
        headers: Vec<String>,
        /// The configuration file (its policies and policy files).
        #[arg(long, short, default_value = "config.yaml", env = "STEPGATE_CONFIG")]
        config: PathBuf,
    },
    /// Try it in a browser: a demo bank app behind the gateway, its transfer form guarded by a
    /// push to a demo phone page (typed number matching, the transfer's amount and IBAN signed),
    /// or, for users without a phone, an SMS code printed here (memory store, console push and
    /// SMS).
    Demo {
        /// The proxy listener: open this address in a browser.
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy: SocketAddr,
        /// The API listener (`/health`, the mobile authentication API).
        #[arg(long, default_value = "127.0.0.1:8081")]
        api: SocketAddr,
        /// The metrics listener.
        #[arg(long, default_value = "127.0.0.1:9100")]
        metrics: SocketAddr,
        /// The demo bank (the upstream app); reachable directly too, without stepgate.
        #[arg(long, default_value = "127.0.0.1:8090")]
        bank: SocketAddr,
        /// The demo user's phone (the bank's app, in a browser page).
        #[arg(long, default_value = "127.0.0.1:8091")]
        phone: SocketAddr,
    },
    /// The reference phone client: enroll, register for push, answer push transactions.
    Device(device::DeviceArgs),
    /// Print the version.
    Version,
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(config),
        Command::Validate { files } => validate(&files),
        Command::CheckPolicy {
            method,
            url,
            ip,
            headers,
            config,
        } => check_policy(&config, &method, &url, ip, &headers),
        Command::Demo {
            proxy,
            api,
            metrics,
            bank,
            phone,
        } => demo(DemoAddrs {
            proxy,
            api,
            metrics,
            bank,
            phone,
        }),
        Command::Device(args) => device::main(args),
        Command::Version => {
            println!("stepgate {}", app::VERSION);
            ExitCode::SUCCESS
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    let settings = match config::load(&path, &ProcessEnv) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            eprintln!("stepgate: invalid configuration, not starting");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    app::init_logging(&settings);
    match app::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "stepgate failed");
            eprintln!("stepgate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code for arguments that cannot be used (as clap's own).
const EXIT_BAD_ARGUMENTS: u8 = 2;

fn check_policy(
    config_path: &std::path::Path,
    method: &str,
    url: &str,
    ip: Option<std::net::IpAddr>,
    headers: &[String],
) -> ExitCode {
    let settings = match config::load(config_path, &ProcessEnv) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        eprintln!("stepgate: '{url}' is not a URL (expected e.g. https://bank.example/transfer)");
        return ExitCode::from(EXIT_BAD_ARGUMENTS);
    }
    // The URL goes in as an absolute-form request target, exactly as typed, so it is read the
    // way the proxy reads one from the wire.
    let Ok(mut req) = pingora::http::RequestHeader::build(method, url.as_bytes(), None) else {
        println!("{method} {url}\ndecision: refused with 400: not a valid request line");
        return ExitCode::SUCCESS;
    };
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            eprintln!("stepgate: '{header}' is not a header (expected Name: value)");
            return ExitCode::from(EXIT_BAD_ARGUMENTS);
        };
        if req
            .append_header(name.trim().to_ascii_lowercase(), value.trim())
            .is_err()
        {
            eprintln!("stepgate: '{header}' is not a valid header");
            return ExitCode::from(EXIT_BAD_ARGUMENTS);
        }
    }
    let router = settings
        .proxy
        .upstream
        .as_ref()
        .map(|upstream| upstream.router)
        .unwrap_or_default();
    let policies = &settings.policies;
    let view = match RequestView::read(&req, ip, &router, policies) {
        Ok(view) => view,
        Err(why) => {
            println!("{method} {url}\ndecision: refused with 400: {why}");
            return ExitCode::SUCCESS;
        }
    };
    let client = ip.map_or_else(
        || "client address not given".to_owned(),
        |ip| format!("client {ip}"),
    );
    let canonical = &view.canonical;
    println!(
        "{method} {url}\ncanonical: {} {}{} ({client})",
        canonical.method, canonical.host, canonical.path
    );
    if let Some(target) = &canonical.forward_target {
        println!("forwarded upstream as: {target}");
    }
    let readings = view.readings();
    let mut also = Vec::new();
    if canonical.method == "HEAD" {
        also.push("method GET (HEAD is served as GET)".to_owned());
    }
    for method in readings.methods {
        also.push(format!("method {method} (method-override header)"));
    }
    if readings.any_method {
        also.push("any method (_method in a POST)".to_owned());
    }
    if let Some(path) = readings.path {
        also.push(format!("path {path} (format suffix)"));
    }
    if !also.is_empty() {
        println!("also read as: {}", also.join(", "));
    }
    let verdict = view.decide(policies);
    let facts = RequestFacts {
        method: verdict.method,
        path: verdict.path,
        ..view.facts()
    };
    if (verdict.method, verdict.path) != (&*canonical.method, &*canonical.path) {
        println!("strictest reading: {} {}", verdict.method, verdict.path);
    }
    for rule in &policies.explain(&facts) {
        let matched = if rule.matched { "MATCH" } else { "no match" };
        println!(
            "  policies[{}] {}: {matched}: {}",
            rule.index,
            rule.name,
            rule.reasons.join("; ")
        );
    }
    match verdict.policy {
        Some(policy) => println!(
            "decision: {} (policy {})",
            verdict.decision.describe(),
            policy.name
        ),
        None => println!(
            "decision: {} (default: no policy matched)",
            verdict.decision.describe()
        ),
    }
    ExitCode::SUCCESS
}

/// Prints `file: ok` or every issue and their count; returns whether the file was valid.
fn report(file: &std::path::Path, kind: &str, issues: &[config::Issue]) -> bool {
    if issues.is_empty() {
        println!("{}: ok ({kind})", file.display());
        return true;
    }
    for issue in issues {
        eprintln!("{issue}");
    }
    let count = issues.len();
    eprintln!(
        "{}: {count} problem{}",
        file.display(),
        if count == 1 { "" } else { "s" }
    );
    false
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut all_valid = true;
    let mut policy_names = std::collections::HashSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if config::is_policy_file(&text) {
            // Alone, a policy file's auth type references cannot be checked; through the config
            // that lists it in proxy.policy_files they are.
            let (_, issues) = config::load_policy_file(file, None, &mut policy_names);
            all_valid &= report(file, "policy file", &issues);
            continue;
        }
        let issues = match config::load(file, &ProcessEnv) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(issues)) => issues,
            Err(read_error) => {
                all_valid = false;
                eprintln!("{read_error}");
                continue;
            }
        };
        all_valid &= report(file, "config", &issues);
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD_CONFIG)
    }
}

// ---- `stepgate demo` -------------------------------------------------------------------------

/// Where the demo listens.
#[derive(Debug, Clone, Copy)]
struct DemoAddrs {
    proxy: SocketAddr,
    api: SocketAddr,
    metrics: SocketAddr,
    bank: SocketAddr,
    phone: SocketAddr,
}

/// The demo's secrets, fresh per run.
struct DemoSecrets {
    /// Hashes codes and signs grants.
    gateway: String,
    /// The bank's session JWT secret, shared with the gateway so it can read the session.
    bank: String,
    /// The demo portal's API client secret (enrollment codes for the phone).
    portal: String,
    /// Carried by the phone page's forms.
    phone_form: String,
}

impl DemoSecrets {
    fn create() -> Result<Self, rand_core::Error> {
        Ok(Self {
            gateway: random_hex_secret()?,
            bank: random_hex_secret()?,
            portal: random_hex_secret()?,
            phone_form: random_hex_secret()?,
        })
    }
}

/// The demo's API client for enrollment codes, and the phone app it enrolls.
const DEMO_PORTAL_CLIENT: &str = "demo-portal";
const DEMO_APPLICATION: &str = "demo-bank-app";
const DEMO_APP_VERSION: &str = "1.0";

/// The demo phone's key store: a directory in the temp folder that goes away with the demo.
struct DemoPhoneState(std::path::PathBuf);

impl DemoPhoneState {
    fn path() -> Result<Self, String> {
        demo_temp_path("phone").map(Self)
    }
}

/// A fresh path in the temporary folder for this run's `what`: a random part, so a run never
/// finds what an earlier one (killed before it could clean up, perhaps with the same process
/// id) left there, nor a file someone else planted under a guessable name.
fn demo_temp_path(what: &str) -> Result<std::path::PathBuf, String> {
    let random = random_hex_secret().map_err(|error| error.to_string())?;
    Ok(std::env::temp_dir().join(format!("stepgate-demo-{}-{what}", &random[..16])))
}

impl Drop for DemoPhoneState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo's step-up assertion key: a new P-256 key in a private file that goes away with
/// the demo, and the public half for the bank.
struct DemoAssertionKey {
    path: std::path::PathBuf,
    decoding_key: jsonwebtoken::DecodingKey,
}

impl DemoAssertionKey {
    fn create() -> Result<Self, String> {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|error| error.to_string())?;
        let key = crate::domain::assertion::AssertionKey::from_pem(&pem)
            .map_err(|error| error.to_string())?;
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(key.jwks()).map_err(|error| error.to_string())?;
        let jwk = jwks.keys.first().ok_or("an empty key set")?;
        let decoding_key =
            jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|error| error.to_string())?;
        let path = demo_temp_path("assertion.pem")?;
        let mut options = std::fs::OpenOptions::new();
        // Never an existing file (or a link planted there): a new one, private from the start.
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(|error| error.to_string())?;
        std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(|error| error.to_string())?;
        Ok(Self { path, decoding_key })
    }
}

impl Drop for DemoAssertionKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// 32 random bytes from the OS, hex-encoded (64 characters).
fn random_hex_secret() -> Result<String, rand_core::Error> {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 32];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// An address a browser (or the gateway) can reach: `0.0.0.0` and `::` become loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// The demo's whole configuration: memory store, one policy on the bank's transfer form (a push
/// with typed number matching, the amount and IBAN bound and signed, falling back to an SMS
/// code), console push and SMS, the demo portal's API client for the phone's enrollment code,
/// identity from the bank's session JWT.
fn demo_config(
    addrs: DemoAddrs,
    bank: SocketAddr,
    secrets: &DemoSecrets,
    assertion_key_file: &Path,
) -> String {
    let DemoAddrs {
        proxy,
        api,
        metrics,
        ..
    } = addrs;
    let login_url = format!("http://{}/", reachable(proxy));
    format!(
        r#"listen: {{ proxy: "{proxy}", api: "{api}", metrics: "{metrics}" }}
public_url: "http://{public_api}"
secret_key: "{gateway_secret}"
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
store: {{ backend: memory }}
api_clients:
  - client_id: {portal_client}
    client_secret: "{portal_secret}"
    apis: [end_user]
    allowed_networks: ["127.0.0.0/8", "::1/128"]
push_configs:
  - {{ id: demo-phone, platform: android, provider: console }}
applications:
  - id: {application}
    name: Demo bank app
    versions:
      - {{ version: "{version}", platform: android, push_config: demo-phone }}
auth_types:
  - name: approve_in_app
    method: push
    ttl_seconds: 120
    number_matching: type
    transaction_signing: true
    fallback: sms_code
    default_messages: {{ en: "Approve the request in the demo bank app" }}
  - name: sms_code
    method: sms
    ttl_seconds: 300
    max_attempts: 3
    max_resends: 2
    default_messages: {{ en: "Demo bank code: {{code}}" }}
sms: {{ gateway: console }}
# The demo's portal takes no callbacks (internal addresses stay refused all the same).
callbacks: {{ only_allow_configured: false }}
policies:
  - name: transfers
    match: {{ methods: [POST], paths: ["/transfer"] }}
    require: {{ auth_type: approve_in_app, freshness_seconds: 60, bind: [form.amount, form.iban] }}
    message: "Approve transfer of {{form.amount}} EUR to {{form.iban}}"
proxy:
  upstream: {{ address: "{bank}" }}
  identity:
    jwt: {{ cookie: {cookie}, algorithm: HS256, secret: "{bank_secret}", user_claim: sub, phone_claim: phone_number }}
  login_url: "{login_url}"
  reload_interval_seconds: 0
  assertion: {{ key_file: "{assertion}" }}
"#,
        cookie = demo::session::COOKIE_NAME,
        assertion = assertion_key_file.display(),
        public_api = reachable(api),
        gateway_secret = secrets.gateway,
        bank_secret = secrets.bank,
        portal_client = DEMO_PORTAL_CLIENT,
        portal_secret = secrets.portal,
        application = DEMO_APPLICATION,
        version = DEMO_APP_VERSION,
    )
}

fn demo(addrs: DemoAddrs) -> ExitCode {
    let secrets = match DemoSecrets::create() {
        Ok(secrets) => secrets,
        Err(error) => {
            eprintln!("stepgate demo: no randomness from the operating system: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listen = |addr: SocketAddr, flag: &str| match std::net::TcpListener::bind(addr)
        .and_then(|listener| Ok((listener.local_addr()?, listener)))
    {
        Ok((bound, listener)) => Ok((reachable(bound), listener)),
        Err(error) => {
            eprintln!("stepgate demo: cannot listen on {addr} ({flag}): {error}");
            Err(ExitCode::FAILURE)
        }
    };
    let (bank_addr, bank_listener) = match listen(addrs.bank, "--bank") {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    let (phone_addr, phone_listener) = match listen(addrs.phone, "--phone") {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    // A fresh step-up assertion key for this run: the gateway signs with it, the bank checks
    // with its public half.
    let assertion = match DemoAssertionKey::create() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("stepgate demo: cannot create the step-up assertion key: {error}");
            return ExitCode::FAILURE;
        }
    };
    let text = demo_config(addrs, bank_addr, &secrets, &assertion.path);
    let env = std::collections::BTreeMap::<&str, &str>::new();
    let settings = match config::load_str(&text, Path::new("<demo>"), &env) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            eprintln!("stepgate demo: the built-in demo configuration does not load (a bug)");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let bank = match demo::spawn_with(
        bank_listener,
        secrets.bank.clone().into_bytes(),
        Some(assertion.decoding_key.clone()),
    ) {
        Ok(bank) => bank,
        Err(error) => {
            eprintln!("stepgate demo: cannot start the demo bank: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The phone enrolls itself for alice once the gateway's API answers.
    let phone_state = match DemoPhoneState::path() {
        Ok(state) => state,
        Err(error) => {
            eprintln!("stepgate demo: no folder for the demo phone: {error}");
            bank.stop(Duration::from_secs(2));
            return ExitCode::FAILURE;
        }
    };
    let phone = match demo::phone::spawn(
        phone_listener,
        demo::phone::PhoneSetup {
            api: format!("http://{}", reachable(addrs.api)),
            portal_client_id: DEMO_PORTAL_CLIENT.to_owned(),
            portal_client_secret: secrets.portal.clone(),
            user_id: demo::DEFAULT_USER.to_owned(),
            application: DEMO_APPLICATION.to_owned(),
            version: DEMO_APP_VERSION.to_owned(),
            state: phone_state.0.clone(),
            form_token: secrets.phone_form.clone(),
        },
    ) {
        Ok(phone) => phone,
        Err(error) => {
            eprintln!("stepgate demo: cannot start the demo phone: {error}");
            bank.stop(Duration::from_secs(2));
            return ExitCode::FAILURE;
        }
    };
    let browse = reachable(addrs.proxy);
    println!(
        "stepgate demo\n\
         \n  1. Open http://{browse}/ in a browser and sign in (alice, +31612345678 are prefilled).\n\
         \x20 2. Transfer money: stepgate holds the transfer, pushes it to alice's phone and shows a number.\n\
         \x20 3. Open alice's phone at http://{phone_addr}/ in another window: it shows the amount and\n\
         \x20    IBAN it signs; type the number the bank's page shows and approve.\n\
         \x20 4. The bank confirms the transfer; its page counts the transfers it received.\n\
         \x20 Any other user has no phone: stepgate falls back to an SMS code, printed here as\n\
         \x20 `SMS to +31*******78: ...`; type it in the browser.\n\
         \n  demo bank (upstream, no step-up): http://{bank_addr}/\n\
         \x20 API: http://{api}/health   metrics: http://{metrics}/metrics\n\
         \x20 memory store, console push and SMS; Ctrl-C stops.\n",
        api = reachable(addrs.api),
        metrics = reachable(addrs.metrics),
    );
    app::init_logging(&settings);
    let outcome = app::run(settings);
    phone.stop(Duration::from_secs(2));
    bank.stop(Duration::from_secs(2));
    drop(phone_state);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "stepgate demo failed");
            eprintln!("stepgate: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_loads_with_the_proxy_in_front_of_the_bank() {
        let addrs = DemoAddrs {
            proxy: "0.0.0.0:18080".parse().unwrap(),
            api: "127.0.0.1:18081".parse().unwrap(),
            metrics: "127.0.0.1:19100".parse().unwrap(),
            bank: "127.0.0.1:18090".parse().unwrap(),
            phone: "127.0.0.1:18091".parse().unwrap(),
        };
        let secrets = DemoSecrets::create().unwrap();
        assert_eq!(secrets.gateway.len(), 64);
        assert_ne!(secrets.gateway, secrets.bank);
        let key = DemoAssertionKey::create().unwrap();
        let text = demo_config(addrs, addrs.bank, &secrets, &key.path);
        let env = std::collections::BTreeMap::<&str, &str>::new();
        let settings = match config::load_str(&text, Path::new("<demo>"), &env) {
            Ok(settings) => settings,
            Err(error) => panic!("{error}\n{text}"),
        };
        assert_eq!(settings.sms.gateway.name(), "console");
        assert!(matches!(
            settings.push_configs[0].provider,
            config::settings::PushProviderSettings::Console(_)
        ));
        assert_eq!(settings.listen.proxy, addrs.proxy);
        let upstream = settings.proxy.upstream.as_ref().unwrap();
        assert_eq!(upstream.addr, addrs.bank);
        assert_eq!(
            settings.proxy.login_url.as_ref().unwrap().as_str(),
            "http://127.0.0.1:18080/"
        );
        assert!(settings.proxy.identity.is_some());
        assert!(settings.proxy.assertion.is_some());
        let facts = |method| RequestFacts {
            method,
            host: "127.0.0.1",
            path: "/transfer",
            client_ip: None,
            headers: &[],
            folded: true,
        };
        let (policy, _) = settings.policies.decide(&facts("POST"));
        assert_eq!(policy.map(|p| p.name.as_str()), Some("transfers"));
        assert!(settings.policies.decide(&facts("GET")).0.is_none());
    }
}
