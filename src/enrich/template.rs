//! Which secure-message template a message is rendered with: the one configured for its
//! language (`nl-BE` also finds `nl`), else English, else the reference's default.
//!
//! May import: domain.

use std::collections::BTreeMap;

use crate::domain::auth_type::FALLBACK_LANGUAGE;
use crate::domain::context::{DEFAULT_TEMPLATE, MessageTemplate, Placeholder, TemplateError};

/// The configured templates, by lower-case language code.
#[derive(Debug, Clone)]
pub struct Templates {
    by_language: BTreeMap<String, MessageTemplate>,
    default: MessageTemplate,
}

impl Templates {
    /// `configured` is checked by config (English present when any is given).
    pub fn new(configured: BTreeMap<String, MessageTemplate>) -> Result<Self, TemplateError> {
        Ok(Self {
            by_language: configured,
            default: MessageTemplate::parse(DEFAULT_TEMPLATE)?,
        })
    }

    /// The template for `language`, falling back to English and then the default, with the
    /// language it is written in (place names are taken in that language too, so a French
    /// request without a French template reads "London", not "Londres", in English text).
    pub fn for_language(&self, language: Option<&str>) -> (&str, &MessageTemplate) {
        let wanted = language.map(|lang| lang.trim().to_ascii_lowercase());
        wanted
            .as_deref()
            .and_then(|lang| {
                self.by_language.get_key_value(lang).or_else(|| {
                    let primary = lang.split('-').next()?;
                    self.by_language.get_key_value(primary)
                })
            })
            .or_else(|| self.by_language.get_key_value(FALLBACK_LANGUAGE))
            .map(|(lang, template)| (lang.as_str(), template))
            .unwrap_or((FALLBACK_LANGUAGE, &self.default))
    }

    /// Whether any template shows a location (otherwise no lookup is needed).
    pub fn any_uses_location(&self) -> bool {
        self.by_language
            .values()
            .chain(self.by_language.is_empty().then_some(&self.default))
            .any(|template| {
                [
                    Placeholder::CountryCode,
                    Placeholder::Region,
                    Placeholder::City,
                ]
                .into_iter()
                .any(|p| template.uses(p))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::context::ContextValues;

    fn values() -> ContextValues {
        ContextValues {
            message: "Pay".into(),
            browser: Some("Chrome".into()),
            city: Some("London".into()),
            ..ContextValues::default()
        }
    }

    fn configured() -> Templates {
        Templates::new(BTreeMap::from([
            (
                "en".to_owned(),
                MessageTemplate::parse("[message] via [browser] from [city]").unwrap(),
            ),
            (
                "nl".to_owned(),
                MessageTemplate::parse("[message] via [browser] vanuit [city]").unwrap(),
            ),
        ]))
        .unwrap()
    }

    #[test]
    fn the_language_picks_the_template_with_english_as_fallback() {
        let templates = configured();
        let render = |lang: Option<&str>| templates.for_language(lang).1.render(&values());
        assert_eq!(render(Some("nl")), "Pay via Chrome vanuit London");
        assert_eq!(render(Some("NL")), "Pay via Chrome vanuit London");
        assert_eq!(render(Some("nl-be")), "Pay via Chrome vanuit London");
        assert_eq!(render(Some("fr")), "Pay via Chrome from London");
        assert_eq!(render(None), "Pay via Chrome from London");
        assert_eq!(templates.for_language(Some("nl-BE")).0, "nl");
        assert_eq!(templates.for_language(Some("fr")).0, "en");
    }

    #[test]
    fn without_configured_templates_every_language_gets_the_default() {
        let templates = Templates::new(BTreeMap::new()).unwrap();
        assert_eq!(
            templates.for_language(Some("nl")).1.render(&values()),
            "Pay Device: Chrome, Location: London"
        );
        assert!(templates.any_uses_location());
        assert_eq!(templates.for_language(Some("nl")).0, "en");
    }

    #[test]
    fn templates_without_location_need_no_lookup() {
        let templates = Templates::new(BTreeMap::from([(
            "en".to_owned(),
            MessageTemplate::parse("[message] ([browser])").unwrap(),
        )]))
        .unwrap();
        assert!(!templates.any_uses_location());
        assert!(configured().any_uses_location());
    }
}
