//! The command line: `run`, `validate`, `check-policy`, `version`, and the exit codes (64 for a bad config, as
//! EX_USAGE; 1 for a failure at run time).
//!
//! May import: everything (wiring only).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config::{self, ConfigError, env::ProcessEnv};
use crate::domain::policy::{RequestFacts, normalize_path};

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
    let Ok(parsed) = url::Url::parse(url) else {
        eprintln!("stepgate: '{url}' is not a URL (expected e.g. https://bank.example/transfer)");
        return ExitCode::from(EXIT_BAD_ARGUMENTS);
    };
    let Some(path) = normalize_path(parsed.path()) else {
        println!(
            "{method} {url}\ndecision: refused: the path cannot be normalized (bad escapes or '..' above the root)"
        );
        return ExitCode::SUCCESS;
    };
    let mut header_pairs = Vec::new();
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            eprintln!("stepgate: '{header}' is not a header (expected Name: value)");
            return ExitCode::from(EXIT_BAD_ARGUMENTS);
        };
        header_pairs.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let facts = RequestFacts {
        method: method.to_ascii_uppercase(),
        host: parsed.host_str().unwrap_or_default().to_ascii_lowercase(),
        path,
        client_ip: ip,
        headers: header_pairs,
    };
    let client = ip.map_or_else(
        || "client address not given".to_owned(),
        |ip| format!("client {ip}"),
    );
    println!("{} {} (path {}, {client})", facts.method, url, facts.path);
    let explained = settings.policies.explain(&facts);
    for rule in &explained {
        let verdict = if rule.matched { "MATCH" } else { "no match" };
        println!(
            "  policies[{}] {}: {verdict}: {}",
            rule.index,
            rule.name,
            rule.reasons.join("; ")
        );
    }
    let (policy, decision) = settings.policies.decide(&facts);
    match policy {
        Some(policy) => println!("decision: {} (policy {})", decision.describe(), policy.name),
        None => println!(
            "decision: {} (default: no policy matched)",
            decision.describe()
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
