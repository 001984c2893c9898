//! Hot reload of route policies: the `PolicyHandle` the proxy reads on every request, a one-shot
//! `reload_now`, and the `watch` task that reloads on SIGHUP and when the config file or a policy
//! file changes. A reload re-reads the whole config with `config::load`; only its policies are
//! swapped in, atomically, and a config with any problem keeps the old policies and logs every
//! issue. Metrics are not recorded here (config may not import telemetry): `watch_with` reports
//! each attempt to a callback and the composition root records it.
//!
//! May import: domain (and the rest of `config`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use super::env::EnvSource;
use super::schema::ConfigFile;
use super::{ConfigError, load, parse};
use crate::domain::policy::PolicySet;

/// The policies in force; cheap to read on every request.
#[derive(Clone)]
pub struct PolicyHandle(Arc<ArcSwap<PolicySet>>);

impl PolicyHandle {
    pub fn new(initial: PolicySet) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(initial)))
    }

    /// The set in force now; a reload never changes a set already handed out.
    pub fn current(&self) -> Arc<PolicySet> {
        self.0.load_full()
    }

    pub fn replace(&self, policies: PolicySet) {
        self.0.store(Arc::new(policies));
    }
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PolicyHandle")
            .field(&self.0.load().policies.len())
            .finish()
    }
}

/// Re-reads the config at `source` and swaps in its policies, returning how many rules are now
/// in force. On any problem every issue is logged (one line each) and the old policies stay.
pub fn reload_now(
    handle: &PolicyHandle,
    source: &Path,
    env: &dyn EnvSource,
) -> Result<usize, ConfigError> {
    match load(source, env) {
        Ok(settings) => {
            let rules = settings.policies.policies.len();
            handle.replace(settings.policies);
            Ok(rules)
        }
        Err(error) => {
            match &error {
                ConfigError::Invalid(issues) => {
                    for issue in issues {
                        tracing::error!("policy reload: {issue}");
                    }
                }
                ConfigError::Read { .. } => tracing::error!("policy reload: {error}"),
            }
            tracing::error!(
                config = %source.display(),
                issues = error.issues().len().max(1),
                "policy reload failed; the previous policies stay in force"
            );
            Err(error)
        }
    }
}

/// Reloads on SIGHUP and, with an `interval`, whenever the watched files change, until
/// `shutdown` changes (pingora's `ShutdownWatch` is this type).
pub async fn watch(
    handle: PolicyHandle,
    source: PathBuf,
    env: Arc<dyn EnvSource + Send + Sync>,
    interval: Option<Duration>,
    shutdown: watch::Receiver<bool>,
) {
    watch_with(handle, source, env, interval, shutdown, |_| {}).await;
}

/// `watch`, calling `on_reload` after every attempt with the rules now in force or the error
/// (for metrics: the config module does not record them itself).
pub async fn watch_with<F>(
    handle: PolicyHandle,
    source: PathBuf,
    env: Arc<dyn EnvSource + Send + Sync>,
    interval: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
    mut on_reload: F,
) where
    F: FnMut(Result<usize, &ConfigError>) + Send,
{
    // Installed before anything else: from here on SIGHUP no longer terminates the process.
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; policies reload only on file changes");
            None
        }
    };
    let mut ticker = interval.map(|period| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    let mut globs = Globs::default();
    // The files the policies in force came from. A change is reloaded once the next poll finds
    // the files as they were (settled), so an editor half-way through a save is not read.
    let mut loaded = match ticker {
        Some(_) => Some(fingerprint_blocking(&source, &mut globs).await),
        None => None,
    };
    let mut settling: Option<Vec<Stamp>> = None;
    tracing::info!(
        config = %source.display(),
        interval_ms = interval.map(|period| period.as_millis()),
        "watching policies (SIGHUP reloads)"
    );
    loop {
        let trigger = tokio::select! {
            _ = shutdown.changed() => break,
            received = next_hangup(&mut hangup) => {
                if received.is_none() {
                    hangup = None;
                    continue;
                }
                if loaded.is_some() {
                    loaded = Some(fingerprint_blocking(&source, &mut globs).await);
                    settling = None;
                }
                "SIGHUP"
            }
            () = next_tick(&mut ticker) => {
                let now = fingerprint_blocking(&source, &mut globs).await;
                if loaded.as_ref() == Some(&now) {
                    settling = None;
                    continue;
                }
                if settling.as_ref() != Some(&now) {
                    settling = Some(now);
                    continue;
                }
                loaded = settling.take();
                "files changed"
            }
        };
        let result = reload_blocking(&handle, &source, &env).await;
        if let Ok(rules) = &result {
            tracing::info!(config = %source.display(), rules, trigger, "policies reloaded");
        }
        on_reload(result.as_ref().copied());
    }
    tracing::debug!("policy watcher stopped");
}

/// `reload_now` off the async threads: loading reads files and resolves the upstream's name.
async fn reload_blocking(
    handle: &PolicyHandle,
    source: &Path,
    env: &Arc<dyn EnvSource + Send + Sync>,
) -> Result<usize, ConfigError> {
    let (handle, path, env) = (handle.clone(), source.to_path_buf(), env.clone());
    match tokio::task::spawn_blocking(move || reload_now(&handle, &path, &*env)).await {
        Ok(result) => result,
        // Only a panic inside `load` gets here; report it as an unreadable config.
        Err(error) => Err(ConfigError::Read {
            path: source.to_path_buf(),
            source: std::io::Error::other(error.to_string()),
        }),
    }
}

async fn next_hangup(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(hangup) => hangup.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One watched file: path, length and modification time (`None`: absent or unknown).
type Stamp = (PathBuf, Option<FileStamp>);
type FileStamp = (u64, Option<SystemTime>);

/// The config's `policy_files` globs as last read, and the stamp of the config they were read
/// from: the config is parsed again only when it changed, not on every poll.
#[derive(Debug, Default)]
struct Globs {
    patterns: Vec<String>,
    read_from: Option<FileStamp>,
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.len(), meta.modified().ok()))
}

async fn fingerprint_blocking(source: &Path, globs: &mut Globs) -> Vec<Stamp> {
    let (path, known) = (source.to_path_buf(), std::mem::take(globs));
    match tokio::task::spawn_blocking(move || {
        let mut known = known;
        let stamps = fingerprint(&path, &mut known);
        (stamps, known)
    })
    .await
    {
        Ok((stamps, known)) => {
            *globs = known;
            stamps
        }
        // A panic while stat-ing files; an empty print makes the next good one count as a change.
        Err(_) => Vec::new(),
    }
}

/// The sorted (path, length, mtime) of the config file and of every file its `policy_files`
/// globs match now, so new and deleted files count. `globs` keeps the last globs that could
/// be read, for when the config itself is mid-edit.
fn fingerprint(source: &Path, globs: &mut Globs) -> Vec<Stamp> {
    let config = file_stamp(source);
    if config.is_none() || config != globs.read_from {
        let parsed = std::fs::read_to_string(source)
            .ok()
            .and_then(|text| parse::<ConfigFile>(&text).ok());
        if let Some((file, _)) = parsed {
            globs.patterns = file.proxy.policy_files;
            globs.read_from = config;
        }
    }
    let base = source.parent().unwrap_or_else(|| Path::new("."));
    let mut files = vec![source.to_path_buf()];
    for pattern in globs.patterns.iter() {
        if let Ok(paths) = glob::glob(&base.join(pattern).to_string_lossy()) {
            files.extend(paths.filter_map(Result::ok));
        }
    }
    let mut stamps: Vec<Stamp> = files
        .into_iter()
        .map(|file| {
            let stamp = file_stamp(&file);
            (file, stamp)
        })
        .collect();
    stamps.sort();
    stamps.dedup();
    stamps
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;

    const CONFIG: &str = r#"secret_key: "0123456789abcdef0123456789abcdef"
auth_types: [{ name: sms_code, method: sms }]
proxy:
  policy_files: ["policies/*.yaml"]
  trusted_proxies: ["127.0.0.1/32"]
  identity: { header: X-User-Id, phone_header: X-User-Phone }
"#;

    const INTERVAL: Duration = Duration::from_millis(50);
    /// How long a change may take to show on a busy machine (normally two intervals).
    const PATIENCE: Duration = Duration::from_secs(5);

    /// SIGHUP reaches every watcher in the process: the SIGHUP test and the tests that count
    /// reloads take turns.
    static SIGNALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn no_env() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }

    fn shared_env() -> Arc<dyn EnvSource + Send + Sync> {
        Arc::new(no_env())
    }

    /// A config folder with `policies/10-main.yaml` holding `policies`, and a handle loaded from it.
    fn setup(policies: &str) -> (tempfile::TempDir, PathBuf, PolicyHandle) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/10-main.yaml"), policies).unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, CONFIG).unwrap();
        let settings = load(&config, &no_env()).unwrap();
        (dir, config, PolicyHandle::new(settings.policies))
    }

    fn names(handle: &PolicyHandle) -> Vec<String> {
        handle
            .current()
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    const ONE: &str = "policies:\n  - { name: pay, match: { paths: [\"/pay\"] }, require: { auth_type: sms_code } }\n";
    const ADMIN: &str = "{ name: admin, match: { paths: [\"/admin/**\"] }, action: deny }";
    const TWO: &str = "policies:\n  - { name: pay, match: { paths: [\"/pay\"] }, require: { auth_type: sms_code } }\n  - { name: admin, match: { paths: [\"/admin/**\"] }, action: deny }\n";

    async fn wait_for(handle: &PolicyHandle, expected: &[&str], within: Duration) {
        let start = Instant::now();
        while names(handle) != expected {
            assert!(
                start.elapsed() < within,
                "still {:?}, expected {expected:?}",
                names(handle)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn reload_picks_up_an_edited_policy_file() {
        let (dir, config, handle) = setup(ONE);
        let before = handle.current();
        std::fs::write(dir.path().join("policies/10-main.yaml"), TWO).unwrap();
        assert_eq!(reload_now(&handle, &config, &no_env()).unwrap(), 2);
        assert_eq!(names(&handle), ["pay", "admin"]);
        assert_eq!(before.policies.len(), 1, "a set handed out never changes");
    }

    #[test]
    fn a_broken_policy_file_keeps_the_old_set_and_returns_every_issue() {
        let (dir, config, handle) = setup(ONE);
        let file = dir.path().join("policies/10-main.yaml");
        std::fs::write(&file, "policies:\n  - { name: pay, match: [\n").unwrap();
        let error = reload_now(&handle, &config, &no_env()).unwrap_err();
        assert_eq!(error.issues().len(), 1, "{error}");
        assert_eq!(error.issues()[0].file, file);
        assert_eq!(names(&handle), ["pay"]);

        std::fs::write(
            &file,
            "policies:\n  - { name: a, require: { auth_type: sms_cod } }\n  - { name: b, action: maybe }\n",
        )
        .unwrap();
        let error = reload_now(&handle, &config, &no_env()).unwrap_err();
        let rendered = error.to_string();
        assert_eq!(error.issues().len(), 2, "{rendered}");
        assert!(
            rendered.contains("policies[0].require.auth_type: unknown auth type 'sms_cod'"),
            "{rendered}"
        );
        assert_eq!(names(&handle), ["pay"]);
    }

    #[test]
    fn a_missing_config_keeps_the_old_set() {
        let (dir, config, handle) = setup(ONE);
        std::fs::remove_file(&config).unwrap();
        let error = reload_now(&handle, &config, &no_env()).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error}");
        assert_eq!(names(&handle), ["pay"]);
        drop(dir);
    }

    #[test]
    fn the_fingerprint_sees_new_edited_and_deleted_files() {
        let (dir, config, _handle) = setup(ONE);
        let mut globs = Globs::default();
        let first = fingerprint(&config, &mut globs);
        assert_eq!(globs.patterns, ["policies/*.yaml"]);
        assert_eq!(first.len(), 2);
        assert_eq!(fingerprint(&config, &mut globs), first);

        let extra = dir.path().join("policies/20-extra.yaml");
        std::fs::write(&extra, "policies: []\n").unwrap();
        let added = fingerprint(&config, &mut globs);
        assert_eq!(added.len(), 3);

        std::fs::write(dir.path().join("policies/10-main.yaml"), TWO).unwrap();
        let edited = fingerprint(&config, &mut globs);
        assert_ne!(edited, added);

        std::fs::remove_file(&extra).unwrap();
        assert_eq!(fingerprint(&config, &mut globs).len(), 2);

        // A config mid-edit keeps the globs last read.
        std::fs::write(&config, "proxy: [\n").unwrap();
        assert_eq!(fingerprint(&config, &mut globs).len(), 2);
        assert_eq!(globs.patterns, ["policies/*.yaml"]);
    }

    #[test]
    fn the_config_is_parsed_again_only_when_it_changed() {
        let (dir, config, _handle) = setup(ONE);
        let mut globs = Globs::default();
        fingerprint(&config, &mut globs);
        assert_eq!(globs.patterns, ["policies/*.yaml"]);
        let stamp = std::fs::metadata(&config).unwrap().modified().unwrap();
        // Same length and, set back, the same mtime: to the watcher it is the same file, so
        // the globs it holds show whether the text was read again.
        let text = std::fs::read_to_string(&config).unwrap();
        let renamed = text.replace("policies/*.yaml", "policiez/*.yaml");
        assert_eq!(renamed.len(), text.len());
        std::fs::write(&config, &renamed).unwrap();
        let file = std::fs::File::options().write(true).open(&config).unwrap();
        file.set_modified(stamp).unwrap();
        fingerprint(&config, &mut globs);
        assert_eq!(globs.patterns, ["policies/*.yaml"]);
        file.set_modified(stamp + Duration::from_secs(5)).unwrap();
        fingerprint(&config, &mut globs);
        assert_eq!(globs.patterns, ["policiez/*.yaml"]);
        drop(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_picks_up_a_new_file_matching_the_glob() {
        let _turn = SIGNALS.lock().await;
        let (dir, config, handle) = setup(ONE);
        let (stop, shutdown) = watch::channel(false);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(watch_with(
            handle.clone(),
            config,
            shared_env(),
            Some(INTERVAL),
            shutdown,
            move |result: Result<usize, &ConfigError>| {
                let _ = seen_tx.send(result.map_err(ToString::to_string));
            },
        ));
        // The watcher takes its first fingerprint when it starts; until it has, a new file is
        // part of it. Each write differs in length, so whichever lands after counts.
        let new_file = dir.path().join("policies/20-new.yaml");
        let start = Instant::now();
        let mut padding = String::new();
        while names(&handle) != ["pay", "admin"] {
            assert!(start.elapsed() < PATIENCE, "new file not picked up");
            std::fs::write(&new_file, format!("policies:\n  - {ADMIN}\n{padding}")).unwrap();
            padding.push_str("#\n");
            tokio::time::sleep(INTERVAL * 6).await;
        }
        // Reported too (a write caught half-way may add an attempt of its own).
        let reported = async {
            loop {
                match seen_rx.recv().await {
                    Some(Ok(2)) => break,
                    Some(_) => {}
                    None => panic!("the watcher stopped"),
                }
            }
        };
        tokio::time::timeout(PATIENCE, reported).await.unwrap();

        // A broken edit is reported and changes nothing; fixing it is picked up again.
        let main = dir.path().join("policies/10-main.yaml");
        std::fs::write(
            &main,
            "policies: [ { name: pay, require: { auth_type: nope } } ]\n",
        )
        .unwrap();
        let reported = tokio::time::timeout(PATIENCE, async {
            loop {
                match seen_rx.recv().await {
                    Some(Err(error)) => break error,
                    Some(Ok(_)) => {}
                    None => panic!("the watcher stopped"),
                }
            }
        })
        .await
        .unwrap();
        assert!(reported.contains("unknown auth type 'nope'"), "{reported}");
        assert_eq!(names(&handle), ["pay", "admin"]);
        std::fs::remove_file(dir.path().join("policies/20-new.yaml")).unwrap();
        std::fs::write(&main, ONE).unwrap();
        wait_for(&handle, &["pay"], PATIENCE).await;

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn watch_returns_promptly_on_shutdown() {
        let (_dir, config, handle) = setup(ONE);
        for interval in [Some(Duration::from_secs(3600)), None] {
            let (stop, shutdown) = watch::channel(false);
            let task = tokio::spawn(watch(
                handle.clone(),
                config.clone(),
                shared_env(),
                interval,
                shutdown,
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_millis(500), task)
                .await
                .expect("watch stops within 500 ms of shutdown")
                .unwrap();
        }
        // A dropped sender (the server went away) stops it too.
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(watch(handle, config, shared_env(), None, shutdown));
        drop(stop);
        tokio::time::timeout(Duration::from_millis(500), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sighup_reloads_without_polling() {
        // Our own listener first: once tokio handles SIGHUP the default action (terminate) is
        // gone for the whole process, so the signals below cannot kill the test binary even if
        // the watcher has not registered yet.
        let mut guard = signal(SignalKind::hangup()).unwrap();
        let _turn = SIGNALS.lock().await;
        let (dir, config, handle) = setup(ONE);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(watch(handle.clone(), config, shared_env(), None, shutdown));
        std::fs::write(dir.path().join("policies/10-main.yaml"), TWO).unwrap();
        let start = Instant::now();
        // Repeated: the watcher may register its listener after the first signal.
        while names(&handle) != ["pay", "admin"] {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no reload on SIGHUP"
            );
            let status = std::process::Command::new("kill")
                .args(["-HUP", &std::process::id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let _ = tokio::time::timeout(Duration::from_millis(100), guard.recv()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_process_env_can_be_shared_with_the_watcher() {
        let env: Arc<dyn EnvSource + Send + Sync> = Arc::new(super::super::env::ProcessEnv);
        assert_eq!(env.get("STEPGATE_TEST_UNSET_VARIABLE_FOR_RELOAD"), None);
    }
}
