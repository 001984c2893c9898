//! Compiles `geolocation`: the secure-message templates (only the six known placeholders,
//! `[message]` in each, `en` present when any is given) and, when `features.geolocation` is on,
//! the MaxMind-format database, opened here and checked to be a City or Country database so a
//! wrong or damaged file fails `stepgate validate` and the boot rather than every sign-in.
//!
//! May import: domain (and the rest of `config`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use super::{Problems, valid_language};
use crate::config::schema;
use crate::config::settings::{GeoDatabase, GeolocationSettings};
use crate::domain::auth_type::FALLBACK_LANGUAGE;
use crate::domain::context::MessageTemplate;

/// Database types (`metadata.database_type`) that hold a country per address, e.g.
/// `GeoIP2-City`, `GeoLite2-Country`, `GeoIP2-Enterprise`, `DBIP-City-Lite`.
const LOCATION_DATABASE_MARKERS: [&str; 3] = ["city", "country", "enterprise"];

/// A public address used for a trial lookup: whether it is found does not matter, whether its
/// record decodes does.
const TRIAL_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(81, 2, 69, 142));

/// Everything that checked out; the rest is reported in `problems`.
pub(super) fn compile(
    raw: &schema::Geolocation,
    enabled: bool,
    base: &Path,
    problems: &mut Problems,
) -> GeolocationSettings {
    let templates = templates(&raw.templates, problems);
    let database = match (enabled, raw.database.as_deref().map(str::trim)) {
        (false, _) => None,
        (true, None | Some("")) => {
            problems.add(
                "geolocation.database",
                "missing while features.geolocation is on (expected a MaxMind City or Country database file, e.g. GeoLite2-City.mmdb)",
            );
            None
        }
        (true, Some(file)) => database(base, file, problems),
    };
    GeolocationSettings {
        database,
        templates,
    }
}

fn templates(
    raw: &BTreeMap<String, String>,
    problems: &mut Problems,
) -> BTreeMap<String, MessageTemplate> {
    if !raw.is_empty() && !raw.contains_key(FALLBACK_LANGUAGE) {
        problems.add(
            "geolocation.templates",
            format!(
                "no '{FALLBACK_LANGUAGE}' template (expected one: it is the fallback language)"
            ),
        );
    }
    let mut compiled = BTreeMap::new();
    for (language, text) in raw {
        let path = format!("geolocation.templates.{language}");
        if !valid_language(language) {
            problems.add(
                path.clone(),
                format!(
                    "'{language}' is not a language code (expected lower case, such as en, nl or pt-br)"
                ),
            );
        }
        match MessageTemplate::parse(text) {
            Ok(template) => {
                compiled.insert(language.clone(), template);
            }
            Err(error) => problems.add(path, error.to_string()),
        }
    }
    compiled
}

fn database(base: &Path, file: &str, problems: &mut Problems) -> Option<GeoDatabase> {
    const PATH: &str = "geolocation.database";
    let full = base.join(file);
    let reader = match maxminddb::Reader::open_readfile(&full) {
        Ok(reader) => reader,
        Err(error) => {
            problems.add(
                PATH,
                format!("cannot open {file} as a MaxMind database: {error}"),
            );
            return None;
        }
    };
    let kind = reader.metadata().database_type.clone();
    let lower = kind.to_ascii_lowercase();
    if !LOCATION_DATABASE_MARKERS
        .iter()
        .any(|marker| lower.contains(marker))
    {
        problems.add(
            PATH,
            format!(
                "{file} is a '{kind}' database, which holds no locations (expected a City or Country database such as GeoLite2-City)"
            ),
        );
        return None;
    }
    let trial = reader
        .lookup(TRIAL_ADDRESS)
        .and_then(|found| found.decode::<maxminddb::geoip2::City>());
    if let Err(error) = trial {
        problems.add(
            PATH,
            format!("{file} is damaged: a trial lookup failed: {error}"),
        );
        return None;
    }
    Some(GeoDatabase {
        path: full,
        reader: Arc::new(reader),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use crate::config::{ConfigError, Settings, load_str};
    use crate::domain::context::{ContextValues, DEFAULT_TEMPLATE, MessageTemplate};

    const BASE: &str = "secret_key: \"0123456789abcdef0123456789abcdef\"\n";

    fn test_data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
    }

    fn load(extra: &str, base: &Path) -> Result<Settings, ConfigError> {
        let env: BTreeMap<&str, &str> = BTreeMap::new();
        load_str(&format!("{BASE}{extra}"), &base.join("c.yaml"), &env)
    }

    fn problems(extra: &str, base: &Path) -> Vec<String> {
        match load(extra, base) {
            Ok(_) => Vec::new(),
            Err(error) => error.issues().iter().map(|i| i.to_string()).collect(),
        }
    }

    #[test]
    fn the_test_city_database_opens_relative_to_the_config_file() {
        let settings = load(
            "features: { geolocation: true }\ngeolocation:\n  database: GeoIP2-City-Test.mmdb\n  templates:\n    en: \"[message] from [city]\"\n    nl: \"[message] vanuit [city]\"\n",
            &test_data(),
        )
        .unwrap();
        let database = settings.geolocation.database.expect("database");
        assert_eq!(database.path, test_data().join("GeoIP2-City-Test.mmdb"));
        assert_eq!(database.reader.metadata().database_type, "GeoIP2-City");
        assert_eq!(
            settings.geolocation.templates.keys().collect::<Vec<_>>(),
            ["en", "nl"]
        );
        assert!(!format!("{database:?}").is_empty());
    }

    #[test]
    fn with_the_feature_off_nothing_is_opened_and_nothing_is_required() {
        let settings = load(
            "geolocation: { database: does-not-exist.mmdb }\n",
            &test_data(),
        )
        .unwrap();
        assert!(settings.geolocation.database.is_none());
        assert!(settings.geolocation.templates.is_empty());
    }

    #[test]
    fn a_missing_unreadable_or_wrong_database_is_reported_on_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("garbage.mmdb"), b"not a database at all").unwrap();
        std::fs::copy(
            test_data().join("GeoLite2-ASN-Test.mmdb"),
            dir.path().join("asn.mmdb"),
        )
        .unwrap();
        let on = "features: { geolocation: true }\n";

        let missing = problems(on, dir.path());
        assert_eq!(missing.len(), 1, "{missing:#?}");
        assert!(
            missing[0].contains("geolocation.database: missing while features.geolocation is on"),
            "{missing:#?}"
        );

        let absent = problems(
            &format!("{on}geolocation:\n  database: nowhere.mmdb\n"),
            dir.path(),
        );
        assert_eq!(absent.len(), 1, "{absent:#?}");
        assert!(
            absent[0].contains(
                "c.yaml:4:3: geolocation.database: cannot open nowhere.mmdb as a MaxMind database"
            ),
            "{absent:#?}"
        );

        let garbage = problems(
            &format!("{on}geolocation:\n  database: garbage.mmdb\n"),
            dir.path(),
        );
        assert_eq!(garbage.len(), 1, "{garbage:#?}");
        assert!(
            garbage[0].contains("cannot open garbage.mmdb as a MaxMind database"),
            "{garbage:#?}"
        );

        let asn = problems(
            &format!("{on}geolocation:\n  database: asn.mmdb\n"),
            dir.path(),
        );
        assert_eq!(asn.len(), 1, "{asn:#?}");
        assert!(
            asn[0].contains("asn.mmdb is a 'GeoLite2-ASN' database, which holds no locations"),
            "{asn:#?}"
        );
    }

    #[test]
    fn templates_use_known_placeholders_and_include_english() {
        let found = problems(
            "geolocation:\n  templates:\n    nl: \"[message] vanuit [stad]\"\n    DE: \"[message] aus [city]\"\n    fr: \"depuis [city]\"\n",
            Path::new("."),
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found
                .iter()
                .any(|p| p.contains("geolocation.templates: no 'en' template")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("geolocation.templates.nl: unknown placeholder '[stad]'")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("geolocation.templates.DE: 'DE' is not a language code")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("geolocation.templates.fr: no [message] placeholder")),
            "{found:#?}"
        );
    }

    #[test]
    fn an_unknown_key_under_geolocation_is_reported() {
        let found = problems("geolocation: { databse: x.mmdb }\n", Path::new("."));
        assert!(
            found.iter().any(|p| p.contains("geolocation.databse")),
            "{found:#?}"
        );
    }

    #[test]
    fn the_default_template_is_valid() {
        let template = MessageTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(
            template.render(&ContextValues {
                message: "m".into(),
                ..ContextValues::default()
            }),
            "m"
        );
    }
}
