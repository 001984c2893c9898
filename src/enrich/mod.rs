//! The secure-message context (`features.geolocation`): turns the portal's base message plus
//! the `ip_address` and `user_agent` given at init into the message a phone shows, e.g.
//! `Pay 10 EUR Device: Mac OSX Chrome, Location: GB, England, London`.
//!
//! `user_agent` names the operating system and browser, `geo` places the address in the
//! database config opened, `template` picks the language's template. Each source stands alone:
//! a failed lookup leaves out only the location (the reference: "only the base message is
//! sent" for what geolocation would have added) and is reported in the result for the caller's
//! audit event; the device part, which needs no lookup, is still shown. Nothing here fails a
//! sign-in.
//!
//! May import: domain, config.

pub mod geo;
pub mod template;
pub mod user_agent;

use std::net::IpAddr;

use crate::config::settings::GeolocationSettings;
use crate::domain::context::{ContextValues, EnrichedMessage, SecureMessageContext, TemplateError};
use geo::Geolocator;
use template::Templates;

/// Why the builder cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("secure-message template: {0}")]
    Template(#[from] TemplateError),
}

/// Built once at boot from the settings; holds the opened database.
#[derive(Clone)]
pub struct SecureMessageBuilder {
    geolocator: Option<Geolocator>,
    templates: Templates,
    /// Whether any template shows a location: if none does, addresses are not looked up.
    needs_location: bool,
}

impl SecureMessageBuilder {
    pub fn new(settings: &GeolocationSettings) -> Result<Self, EnrichError> {
        let templates = Templates::new(settings.templates.clone())?;
        Ok(Self {
            geolocator: settings
                .database
                .as_ref()
                .map(|database| Geolocator::new(database.reader.clone())),
            needs_location: templates.any_uses_location(),
            templates,
        })
    }

    /// The message to show; see the module doc for what is left out when.
    pub fn build(
        &self,
        base: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        language: Option<&str>,
    ) -> EnrichedMessage {
        if ip.is_none() && user_agent.is_none() {
            return EnrichedMessage {
                text: base.to_owned(),
                geolocation_failure: None,
            };
        }
        let device = user_agent.map(user_agent::parse).unwrap_or_default();
        let mut values = ContextValues {
            message: base.to_owned(),
            operating_system: device.operating_system,
            browser: device.browser,
            ..ContextValues::default()
        };
        let (language, template) = self.templates.for_language(language);
        let mut geolocation_failure = None;
        if let (Some(ip), Some(geolocator), true) = (ip, &self.geolocator, self.needs_location) {
            match geolocator.locate(ip, Some(language)) {
                Ok(location) => {
                    values.country_code = Some(location.country_code);
                    values.region = location.region;
                    values.city = location.city;
                }
                Err(failure) => geolocation_failure = Some(failure),
            }
        }
        let text = template.render(&values);
        EnrichedMessage {
            // A base message that is only white space renders empty: keep what the portal sent.
            text: if text.is_empty() {
                base.to_owned()
            } else {
                text
            },
            geolocation_failure,
        }
    }
}

impl SecureMessageContext for SecureMessageBuilder {
    fn build(
        &self,
        base: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        language: Option<&str>,
    ) -> EnrichedMessage {
        SecureMessageBuilder::build(self, base, ip, user_agent, language)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::settings::GeoDatabase;
    use crate::domain::context::{GeolocationFailure, MessageTemplate};

    const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

    fn settings(templates: &[(&str, &str)]) -> GeolocationSettings {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/GeoIP2-City-Test.mmdb");
        GeolocationSettings {
            database: Some(GeoDatabase {
                reader: Arc::new(maxminddb::Reader::open_readfile(&path).unwrap()),
                path,
            }),
            templates: templates
                .iter()
                .map(|(lang, text)| ((*lang).to_owned(), MessageTemplate::parse(text).unwrap()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn builder() -> SecureMessageBuilder {
        SecureMessageBuilder::new(&settings(&[])).unwrap()
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn browser_and_address_fill_the_default_template() {
        let built = builder().build("Pay 10 EUR", ip("81.2.69.142"), Some(CHROME_MAC), None);
        assert_eq!(
            built.text,
            "Pay 10 EUR Device: Mac OSX Chrome, Location: GB, England, London"
        );
        assert_eq!(built.geolocation_failure, None);
    }

    #[test]
    fn a_private_address_keeps_the_device_part_and_reports_the_failure() {
        let built = builder().build("Pay 10 EUR", ip("192.168.1.20"), Some(CHROME_MAC), None);
        assert_eq!(built.text, "Pay 10 EUR Device: Mac OSX Chrome");
        assert_eq!(
            built.geolocation_failure,
            Some(GeolocationFailure::NonPublicAddress)
        );
        let built = builder().build("Pay 10 EUR", ip("8.8.8.8"), None, None);
        assert_eq!(built.text, "Pay 10 EUR");
        assert_eq!(
            built.geolocation_failure,
            Some(GeolocationFailure::NotFound)
        );
    }

    #[test]
    fn only_an_address_or_only_a_user_agent() {
        assert_eq!(
            builder().build("Pay", ip("89.160.20.112"), None, None).text,
            "Pay, Location: SE, Östergötland County, Linköping"
        );
        assert_eq!(
            builder()
                .build("Pay", None, Some("garbage ][ %%"), None)
                .text,
            "Pay"
        );
        let nothing = builder().build("Pay", None, None, Some("nl"));
        assert_eq!(nothing.text, "Pay");
        assert_eq!(nothing.geolocation_failure, None);
    }

    #[test]
    fn the_language_picks_the_template_and_the_names() {
        let builder = SecureMessageBuilder::new(&settings(&[
            ("en", "[message] from [city] ([countryCode])"),
            ("de", "[message] aus [city] ([countryCode])"),
        ]))
        .unwrap();
        assert_eq!(
            builder
                .build("Zahlen", ip("89.160.20.112"), None, Some("de"))
                .text,
            "Zahlen aus Linköping (SE)"
        );
        assert_eq!(
            builder
                .build("Pay", ip("81.2.69.142"), None, Some("sv"))
                .text,
            "Pay from London (GB)"
        );
        // Place names follow the template's language: English text, English names.
        assert_eq!(
            builder
                .build("Pay", ip("81.2.69.142"), None, Some("fr"))
                .text,
            "Pay from London (GB)"
        );
        let french = SecureMessageBuilder::new(&settings(&[
            ("en", "[message] from [city]"),
            ("fr", "[message] depuis [city]"),
        ]))
        .unwrap();
        assert_eq!(
            french
                .build("Payer", ip("81.2.69.142"), None, Some("fr-CA"))
                .text,
            "Payer depuis Londres"
        );
    }

    #[test]
    fn without_a_location_placeholder_nothing_is_looked_up_or_reported() {
        let builder =
            SecureMessageBuilder::new(&settings(&[("en", "[message] on [browser]")])).unwrap();
        let built = builder.build("Pay", ip("10.0.0.1"), Some(CHROME_MAC), None);
        assert_eq!(built.text, "Pay on Chrome");
        assert_eq!(built.geolocation_failure, None);
    }

    #[test]
    fn through_the_domain_seam() {
        let context: Arc<dyn SecureMessageContext> = Arc::new(builder());
        assert_eq!(
            context
                .build("Pay", ip("2.125.160.216"), Some(CHROME_MAC), Some("en"))
                .text,
            "Pay Device: Mac OSX Chrome, Location: GB, England, Boxford"
        );
    }
}
