//! Compiles `applications` and `enrollment`: unique application ids, versions per platform
//! whose push config exists and serves that platform, a bundle id for every iOS version that
//! gets pushes, and a known push enrollment mode.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use super::Problems;
use crate::config::schema;
use crate::config::settings::EnrollmentSettings;
use crate::domain::application::{AppVersion, Application, Applications};
use crate::domain::device::{Platform, PushEnrollmentMode};
use crate::domain::push::ApnsEnvironment;

const DEFAULT_MAX_PIN_ATTEMPTS: u32 = 3;
const MAX_CODE_TTL_SECONDS: u64 = 7 * 24 * 3600;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Every application that checked out; the others are reported in `problems`.
pub(super) fn applications(
    raw: &[schema::Application],
    push_configs: &[schema::PushConfig],
    problems: &mut Problems,
) -> Applications {
    let mut ids = HashSet::new();
    let mut compiled = Vec::new();
    for (i, app) in raw.iter().enumerate() {
        let at = |field: &str| format!("applications[{i}].{field}");
        let before = problems.0.len();
        let id = app.id.trim();
        if !valid_id(id) {
            problems.add(
                at("id"),
                format!(
                    "'{id}' is not an application id (expected letters, digits, '_', '-' or '.')"
                ),
            );
        } else if !ids.insert(id.to_owned()) {
            problems.add(
                at("id"),
                format!("duplicate application id '{id}' (expected unique ids)"),
            );
        }
        let name = if app.name.trim().is_empty() {
            id.to_owned()
        } else {
            app.name.trim().to_owned()
        };
        let mut versions = Vec::new();
        let mut seen_versions = HashSet::new();
        for (j, raw_version) in app.versions.iter().enumerate() {
            if let Some(version) = app_version(i, j, raw_version, push_configs, problems) {
                if !seen_versions.insert((version.version.clone(), version.platform)) {
                    problems.add(
                        format!("applications[{i}].versions[{j}].version"),
                        format!(
                            "version '{}' for {} is listed twice (expected one entry per version and platform)",
                            version.version, version.platform
                        ),
                    );
                }
                versions.push(version);
            }
        }
        if problems.0.len() == before {
            compiled.push(Application {
                id: id.to_owned(),
                name,
                pin: app.pin,
                fingerprint: app.fingerprint,
                custom_authenticator: app.custom_authenticator,
                max_pin_attempts: app.max_pin_attempts.unwrap_or(DEFAULT_MAX_PIN_ATTEMPTS),
                versions,
            });
        }
    }
    Applications::new(compiled)
}

fn app_version(
    i: usize,
    j: usize,
    raw: &schema::AppVersion,
    push_configs: &[schema::PushConfig],
    problems: &mut Problems,
) -> Option<AppVersion> {
    let at = |field: &str| format!("applications[{i}].versions[{j}].{field}");
    let before = problems.0.len();
    let version = raw.version.trim();
    if version.is_empty() {
        problems.add(
            at("version"),
            "missing (expected the app's version name, e.g. 1.0)",
        );
    }
    let platform = Platform::from_str(raw.platform.trim())
        .map_err(|err| problems.add(at("platform"), err.to_string()))
        .ok();
    let apns_environment = match raw.apns_environment.as_deref() {
        None => ApnsEnvironment::Production,
        Some(text) => ApnsEnvironment::from_str(text)
            .map_err(|err| problems.add(at("apns_environment"), err.to_string()))
            .unwrap_or_default(),
    };
    if raw.apns_environment.is_some() && platform == Some(Platform::Android) {
        problems.add(
            at("apns_environment"),
            "only iOS versions use APNs (expected no apns_environment here)",
        );
    }
    if let Some(push_config) = &raw.push_config {
        match push_configs.iter().find(|c| c.id.trim() == push_config) {
            None => {
                let known: Vec<&str> = push_configs.iter().map(|c| c.id.as_str()).collect();
                problems.add(
                    at("push_config"),
                    format!(
                        "unknown push config '{push_config}' (expected one of: {})",
                        if known.is_empty() {
                            "none configured, add push_configs".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            Some(config) => {
                if let Some(platform) = platform
                    && config.platform.trim() != platform.as_str()
                {
                    problems.add(
                        at("push_config"),
                        format!(
                            "push config '{push_config}' is for {}, this version is {platform} (expected a push config of the same platform)",
                            config.platform.trim()
                        ),
                    );
                }
            }
        }
        if platform == Some(Platform::Ios)
            && raw.bundle_id.as_deref().is_none_or(|b| b.trim().is_empty())
        {
            problems.add(
                at("bundle_id"),
                "missing (expected the iOS bundle id: APNs needs it as the topic)",
            );
        }
    }
    if problems.0.len() != before {
        return None;
    }
    Some(AppVersion {
        version: version.to_owned(),
        platform: platform?,
        push_config: raw.push_config.clone(),
        apns_environment,
        bundle_id: raw.bundle_id.as_ref().map(|b| b.trim().to_owned()),
    })
}

pub(super) fn enrollment(raw: &schema::Enrollment, problems: &mut Problems) -> EnrollmentSettings {
    if !(60..=MAX_CODE_TTL_SECONDS).contains(&raw.code_ttl_seconds) {
        problems.add(
            "enrollment.code_ttl_seconds",
            format!(
                "{} is out of range (expected 60 to {MAX_CODE_TTL_SECONDS})",
                raw.code_ttl_seconds
            ),
        );
    }
    let mode = PushEnrollmentMode::from_str(raw.push.mode.trim()).unwrap_or_else(|other| {
        problems.add(
            "enrollment.push.mode",
            format!("unknown mode '{other}' (expected single, override or multiple)"),
        );
        PushEnrollmentMode::Single
    });
    EnrollmentSettings {
        enabled: raw.enabled,
        code_ttl: Duration::from_secs(raw.code_ttl_seconds),
        unique_keys_per_enrollment: raw.unique_keys_per_enrollment,
        push_enrollment_enabled: raw.push.enrollment_enabled,
        push_authorization_enabled: raw.push.authorization_enabled,
        mode,
    }
}
