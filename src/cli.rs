//! The command line: `run`, `validate`, `version`, and the exit codes (64 for a bad config, as
//! EX_USAGE; 1 for a failure at run time).
//!
//! May import: everything (wiring only).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config::{self, env::ProcessEnv};

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
    /// Print the version.
    Version,
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(config),
        Command::Validate { files } => validate(&files),
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

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut all_valid = true;
    for file in files {
        match config::load(file, &ProcessEnv) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(error) => {
                all_valid = false;
                let count = error.issues().len().max(1);
                eprintln!("{error}");
                eprintln!(
                    "{}: {count} problem{}",
                    file.display(),
                    if count == 1 { "" } else { "s" }
                );
            }
        }
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD_CONFIG)
    }
}
