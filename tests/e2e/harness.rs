//! A builder for a running gateway (`GateBuilder` -> `Gate`), a scratch Redis server, and a
//! plain HTTP client. Every gate gets its own ports, directory and Redis key prefix.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BINARY: &str = env!("CARGO_BIN_EXE_stepgate");
pub const SECRET: &str = "e2e-secret-0123456789abcdef0123456789";

pub fn redis_url() -> String {
    std::env::var("STEPGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A loopback address for a server a test starts in another process (which binds it itself).
///
/// Ports come from below the kernel's ephemeral range, so no outgoing connection of any test
/// (whose local port the kernel picks from that range) can take one between this check and the
/// server's bind; a port is handed out once per test process, picked at random so that test
/// processes running side by side rarely try the same one; and `GateBuilder::start` starts
/// again on fresh ports in the rare case a bind still fails.
pub fn free_addr() -> SocketAddr {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (low, high) = below_ephemeral_range();
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = low + (rand_suffix() % u128::from(high - low)) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(socket) = TcpListener::bind(("127.0.0.1", port)) {
            handed_out.insert(port);
            return socket.local_addr().expect("local addr");
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// Ports no outgoing connection is given: from 10000 up to the start of the kernel's ephemeral
/// range (`ip_local_port_range`, 32768 by default).
fn below_ephemeral_range() -> (u16, u16) {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12_000 {
        (10_000, ephemeral_low)
    } else {
        // An unusual range: fall back to the ports above it.
        (61_000, 65_000)
    }
}

pub fn client() -> reqwest::Client {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// A client that does not follow redirects (to see stepgate's 303s).
#[allow(dead_code)]
pub fn client_without_redirects() -> reqwest::Client {
    let _ = client();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Which store a scenario runs on; `on_both_stores!` runs each on both.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Memory,
    Redis,
}

impl Store {
    /// A gate on this store (Redis: the shared server, a fresh key prefix per gate).
    pub fn builder(self) -> GateBuilder {
        match self {
            Store::Memory => GateBuilder::memory(),
            Store::Redis => GateBuilder::redis(redis_url()),
        }
    }
}

/// Runs each named `async fn name(store: Store)` of the calling module as two tests, `memory::name`
/// and `redis::name` (the module must have `Store` in scope).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name(super::Store::Memory).await; })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { super::$name(super::Store::Redis).await; })*
        }
    };
}
pub(crate) use on_both_stores;

pub enum StoreChoice {
    Memory,
    Redis {
        url: String,
    },
    /// The whole `store:` section, as given (several gates sharing one key prefix).
    Yaml(String),
}

pub struct GateBuilder {
    store: StoreChoice,
    /// Chosen up front so `config_text` keeps its signature; bound only when the config has an
    /// admin API client.
    admin: SocketAddr,
    extra_yaml: String,
    env: Vec<(String, String)>,
    files: Vec<(String, String)>,
}

impl GateBuilder {
    pub fn memory() -> Self {
        Self {
            store: StoreChoice::Memory,
            admin: free_addr(),
            extra_yaml: String::new(),
            env: Vec::new(),
            files: Vec::new(),
        }
    }

    pub fn redis(url: impl Into<String>) -> Self {
        Self {
            store: StoreChoice::Redis { url: url.into() },
            admin: free_addr(),
            extra_yaml: String::new(),
            env: Vec::new(),
            files: Vec::new(),
        }
    }

    /// A gate whose `store:` section is `yaml` as given.
    #[allow(dead_code)]
    pub fn store_yaml(yaml: impl Into<String>) -> Self {
        Self {
            store: StoreChoice::Yaml(yaml.into()),
            ..Self::memory()
        }
    }

    /// Sets an environment variable for the gate process.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Writes a file (path relative to the config's folder) before the gate starts.
    #[allow(dead_code)]
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_owned(), contents.to_owned()));
        self
    }

    /// Appends top-level YAML to the generated config.
    #[allow(dead_code)]
    pub fn yaml(mut self, extra: &str) -> Self {
        self.extra_yaml.push_str(extra);
        self
    }

    pub fn config_text(&self, api: SocketAddr, metrics: SocketAddr, proxy: SocketAddr) -> String {
        let store = match &self.store {
            StoreChoice::Memory => "store: { backend: memory }\n".to_owned(),
            StoreChoice::Redis { url } => format!(
                "store:\n  backend: redis\n  redis: {{ url: \"{url}\", key_prefix: \"stepgate-e2e:{}:\", connect_timeout_ms: 300, response_timeout_ms: 300 }}\n",
                uuid_like()
            ),
            StoreChoice::Yaml(yaml) => yaml.clone(),
        };
        format!(
            "listen: {{ proxy: \"{proxy}\", api: \"{api}\", metrics: \"{metrics}\", admin: \"{admin}\" }}\n\
             secret_key: \"{SECRET}\"\n\
             server: {{ threads: 1, grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 1 }}\n\
             log: {{ level: info }}\n\
             {store}{}",
            self.extra_yaml,
            admin = self.admin,
        )
    }

    pub fn start(mut self) -> Gate {
        // Another process may still take a port between `free_addr` and the gate's bind: then
        // the gate stops at once saying so, and starts again on fresh ports.
        for _ in 0..3 {
            match self.try_start() {
                Ok(gate) => return gate,
                Err(log) => {
                    eprintln!("a port was taken; starting again:\n{log}");
                    self.admin = free_addr();
                }
            }
        }
        self.try_start()
            .unwrap_or_else(|log| panic!("stepgate did not come up; log:\n{log}"))
    }

    /// Starts the gate; `Err` (its log) when it stopped because one of its addresses was in
    /// use.
    fn try_start(&self) -> Result<Gate, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (api, metrics, proxy) = (free_addr(), free_addr(), free_addr());
        let config = dir.path().join("config.yaml");
        fs::write(&config, self.config_text(api, metrics, proxy)).expect("write config");
        for (name, contents) in &self.files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create folder");
            }
            fs::write(path, contents).expect("write file");
        }
        let mut gate = Gate::spawn(dir, config, api, metrics, &self.env);
        gate.proxy = proxy;
        gate.admin = self.admin;
        if gate.wait_until_live() {
            Ok(gate)
        } else {
            Err(gate.log_text())
        }
    }
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_suffix()
    )
}

fn rand_suffix() -> u128 {
    let mut bytes = [0u8; 8];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    u128::from(u64::from_le_bytes(bytes))
}

pub struct Gate {
    child: Child,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    /// The proxy listener (serving only when the config has `proxy.upstream`).
    pub proxy: SocketAddr,
    /// The admin listener (serving only when the config has an `admin` API client).
    #[allow(dead_code)]
    pub admin: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Gate {
    fn spawn(
        dir: TempDir,
        config: PathBuf,
        api: SocketAddr,
        metrics: SocketAddr,
        env: &[(String, String)],
    ) -> Gate {
        let log = dir.path().join("stepgate.log");
        let log_file = fs::File::create(&log).expect("log file");
        let child = Command::new(BINARY)
            .args(["run", "--config"])
            .arg(&config)
            // Relative paths in the config (outbox, policy files) land in the gate's folder.
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn stepgate");
        Gate {
            child,
            api,
            metrics,
            proxy: api,
            admin: api,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// A URL on the admin listener.
    #[allow(dead_code)]
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A URL on the proxy listener.
    #[allow(dead_code)]
    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Waits until the proxy listener accepts connections (pingora binds it when it starts).
    #[allow(dead_code)]
    pub fn wait_for_proxy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.proxy).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the proxy did not come up; log:\n{}", self.log_text());
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// The metrics listener's exposition text.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.metrics_url())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The gate's folder (config, files, outbox).
    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the API and metrics listeners accept connections; `false` when the gate
    /// stopped because an address was in use. Panics when it stopped for another reason or
    /// did not come up in time.
    fn wait_until_live(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log_text();
                if log.to_ascii_lowercase().contains("address already in use") {
                    return false;
                }
                panic!("stepgate stopped ({status}) before it came up; log:\n{log}");
            }
            if std::net::TcpStream::connect(self.api).is_ok()
                && std::net::TcpStream::connect(self.metrics).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("stepgate did not come up; log:\n{}", self.log_text());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "stepgate did not stop within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A private `redis-server` on a fixed port, which tests stop and start to simulate outages.
pub struct ScratchRedis {
    pub port: u16,
    tls: bool,
    child: Option<Child>,
    dir: TempDir,
}

impl ScratchRedis {
    pub fn new() -> Self {
        Self {
            port: free_addr().port(),
            tls: false,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A Redis that only speaks TLS, with a certificate for 127.0.0.1 issued by a private CA
    /// (`ca_file`), both made by `openssl`.
    pub fn with_tls() -> Self {
        let mut redis = Self::new();
        redis.tls = true;
        let dir = redis.dir.path();
        let openssl = |args: &str| {
            let status = Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(status.success(), "openssl {args}");
        };
        fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write ext");
        openssl(
            "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=stepgate-test-ca -keyout ca.key -out ca.pem",
        );
        openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out server.csr");
        openssl(
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out cert.pem",
        );
        redis
    }

    /// The CA that issued a TLS Redis's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        if self.tls {
            command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.path().join("cert.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.path().join("key.pem"));
        } else {
            command.args(["--port", &port]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/with-deps installs it)");
        self.child = Some(child);
        wait_for_port(self.port, Path::new("redis-server"));
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ScratchRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_port(port: u16, what: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not listen on {port}", what.display());
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}
