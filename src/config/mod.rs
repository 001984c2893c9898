//! Configuration: the serde mirror of `config.yaml` (`schema`), `STEPGATE_*` overrides (`env`),
//! validation that collects every problem with file, line and path (`validate`, `locate`), and
//! the compiled `Settings` the gateway runs on.
//!
//! May import: domain.

pub mod env;
pub mod locate;
pub mod reload;
pub mod schema;
pub mod settings;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use self::env::EnvSource;
use self::locate::{Position, PositionIndex};
use std::collections::HashSet;

use serde::de::DeserializeOwned;

use self::schema::{ConfigFile, PolicyFile};
pub use self::settings::Settings;
use crate::domain::policy::Policy;

/// One problem, located: in the file (line and column) or in the environment variable that
/// supplied the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub file: PathBuf,
    pub position: Position,
    /// Set when the value came from this environment variable rather than the file.
    pub env_var: Option<String>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Position { line, column } = self.position;
        let file = self.file.display();
        match &self.env_var {
            Some(var) => write!(f, "{file}: {} (from {var}): {}", self.path, self.message),
            None if self.path.is_empty() => write!(f, "{file}:{line}:{column}: {}", self.message),
            None => write!(f, "{file}:{line}:{column}: {}: {}", self.path, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", display_issues(.0))]
    Invalid(Vec<Issue>),
}

impl ConfigError {
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Invalid(issues) => issues,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn display_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(Issue::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads, checks and compiles one config file.
pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(&text, path, env)
}

/// Parses one YAML document into `T`; every unknown key and a shape error become issues located
/// in `file`.
fn parse_located<T: DeserializeOwned>(
    text: &str,
    file: &Path,
    index: &PositionIndex,
) -> Result<(T, Vec<Issue>), Vec<Issue>> {
    let issue = |position: Position, path_in_file: String, message: String| Issue {
        file: file.to_path_buf(),
        position,
        env_var: None,
        path: path_in_file,
        message,
    };
    match parse::<T>(text) {
        Ok((parsed, unknown_keys)) => {
            let issues = unknown_keys
                .into_iter()
                .map(|key_path| {
                    let message = "unknown key (expected one of the keys listed in the configuration reference)".to_owned();
                    issue(index.locate(&key_path), key_path, message)
                })
                .collect();
            Ok((parsed, issues))
        }
        Err((error_path, message, position)) => {
            let position = position.unwrap_or_else(|| index.locate(&error_path));
            Err(vec![issue(position, error_path, message)])
        }
    }
}

/// Checks and compiles config text; `path` names it in messages, and `proxy.policy_files` are
/// found relative to its folder.
pub fn load_str(text: &str, path: &Path, env: &dyn EnvSource) -> Result<Settings, ConfigError> {
    let index = PositionIndex::build(text);
    let (mut file, mut issues) =
        parse_located::<ConfigFile>(text, path, &index).map_err(ConfigError::Invalid)?;
    let origins = env::apply(&mut file, env);
    let policy_patterns = file.proxy.policy_files.clone();
    let mut policy_names: HashSet<String> = file
        .policies
        .iter()
        .map(|p| p.name.trim().to_owned())
        .collect();
    let compiled = validate::compile(file, path);
    if let Err(problems) = &compiled {
        issues.extend(problems.iter().map(|problem| Issue {
            file: path.to_path_buf(),
            position: index.locate(&problem.path),
            env_var: origins.get(&problem.path).cloned(),
            path: problem.path.clone(),
            message: problem.message.clone(),
        }));
    }
    issues.sort_by_key(|issue| issue.position);
    let auth_types = compiled.as_ref().ok().map(|settings| &settings.auth_types);
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let (file_policies, policy_issues) = load_policy_files(
        &policy_patterns,
        base,
        path,
        &index,
        auth_types,
        &mut policy_names,
    );
    issues.extend(policy_issues);
    if let Ok(settings) = &compiled {
        issues.extend(identity_needed(settings, &file_policies, path, &index));
    }
    match compiled {
        Ok(mut settings) if issues.is_empty() => {
            settings.policies.policies.extend(file_policies);
            Ok(settings)
        }
        _ => Err(ConfigError::Invalid(issues)),
    }
}

/// Reads every file the patterns name, in name order, each problem located in its own file.
/// Step-up needs to know who the user is: a policy that demands it without `proxy.identity`
/// could never be satisfied.
fn identity_needed(
    settings: &Settings,
    file_policies: &[Policy],
    path: &Path,
    index: &PositionIndex,
) -> Option<Issue> {
    if settings.proxy.identity.is_some() {
        return None;
    }
    let policy = settings
        .policies
        .policies
        .iter()
        .chain(file_policies)
        .find(|policy| matches!(policy.decision, crate::domain::policy::Decision::StepUp(_)))?;
    Some(Issue {
        file: path.to_path_buf(),
        position: index.locate("proxy"),
        env_var: None,
        path: "proxy.identity".to_owned(),
        message: format!(
            "missing, but policy '{}' demands step-up (expected identity.header, identity.jwt or identity.introspection)",
            policy.name
        ),
    })
}

fn load_policy_files(
    patterns: &[String],
    base: &Path,
    config_path: &Path,
    config_index: &PositionIndex,
    auth_types: Option<&crate::domain::auth_type::AuthTypes>,
    names: &mut HashSet<String>,
) -> (Vec<Policy>, Vec<Issue>) {
    let mut policies = Vec::new();
    let mut issues = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let full = base.join(pattern);
        let mut files: Vec<PathBuf> = match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => paths.filter_map(Result::ok).collect(),
            Err(_) => continue, // reported by validate as a bad pattern
        };
        files.sort();
        let has_wildcard = pattern.contains(['*', '?', '[']);
        if files.is_empty() && !has_wildcard {
            let at = format!("proxy.policy_files[{i}]");
            issues.push(Issue {
                file: config_path.to_path_buf(),
                position: config_index.locate(&at),
                env_var: None,
                path: at,
                message: format!("{} does not exist (expected a policy file)", full.display()),
            });
        }
        for file in files {
            let (found, file_issues) = load_policy_file(&file, auth_types, names);
            policies.extend(found);
            issues.extend(file_issues);
        }
    }
    (policies, issues)
}

/// Checks one policy file (a `policies:` list). `auth_types` (when known) checks references.
pub fn load_policy_file(
    file: &Path,
    auth_types: Option<&crate::domain::auth_type::AuthTypes>,
    names: &mut HashSet<String>,
) -> (Vec<Policy>, Vec<Issue>) {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            let message = format!("cannot read: {error}");
            let issue = Issue {
                file: file.to_path_buf(),
                position: Position::START,
                env_var: None,
                path: String::new(),
                message,
            };
            return (Vec::new(), vec![issue]);
        }
    };
    let index = PositionIndex::build(&text);
    let (parsed, mut issues) = match parse_located::<PolicyFile>(&text, file, &index) {
        Ok(parsed) => parsed,
        Err(issues) => return (Vec::new(), issues),
    };
    let (policies, problems) = validate::policies(&parsed.policies, auth_types, names);
    issues.extend(problems.into_iter().map(|problem| Issue {
        file: file.to_path_buf(),
        position: index.locate(&problem.path),
        env_var: None,
        path: problem.path,
        message: problem.message,
    }));
    issues.sort_by_key(|issue| issue.position);
    (policies, issues)
}

/// Whether a YAML text is a policy file (its only top-level key is `policies`) rather than a
/// gateway config.
pub fn is_policy_file(text: &str) -> bool {
    let index = PositionIndex::build(text);
    index.contains("policies") && index.top_level_keys().iter().all(|key| key == "policies")
}

type ParseFailure = (String, String, Option<Position>);

/// The typed parse. Unknown keys do not stop it: they are collected with their paths. A shape
/// error (wrong type, bad YAML) does stop it, and is reported with its path and position.
fn parse<T: DeserializeOwned>(text: &str) -> Result<(T, Vec<String>), ParseFailure> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let options = serde_saphyr::options! { with_snippet: false };
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
        serde_ignored::deserialize(tracked, |ignored| unknown.push(format_ignored(&ignored)))
    });
    match result {
        Ok(file) => Ok((file, unknown)),
        Err(error) => {
            let path = format_tracked(&track.path());
            let position = error.location().filter(|l| l.line() > 0).map(|l| Position {
                line: l.line() as usize,
                column: l.column().max(1) as usize,
            });
            Err((path, strip_location(&error.to_string()), position))
        }
    }
}

/// serde-saphyr adds the location to its messages; ours is printed in front already.
fn strip_location(message: &str) -> String {
    let first_line = message.trim().lines().next().unwrap_or_default();
    let without_prefix = first_line.strip_prefix("error: ").unwrap_or(first_line);
    let without_suffix = match without_prefix.rfind(" at line ") {
        Some(cut) => &without_prefix[..cut],
        None => without_prefix,
    };
    match without_suffix {
        "invalid u64" | "invalid u32" => {
            "not a whole number (expected digits only, such as 300)".to_owned()
        }
        "invalid bool" => "not a boolean (expected true or false)".to_owned(),
        other => other.to_owned(),
    }
}

fn format_tracked(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

fn format_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", format_ignored(parent)),
        Path::Map { parent, key } => {
            let parent = format_ignored(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => format_ignored(parent),
    }
}

#[cfg(test)]
mod tests;
