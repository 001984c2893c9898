//! The secure-message context: the seam through which the API adds "where and on what is this
//! sign-in happening" to the secure message a phone shows (`SecureMessageContext`, implemented
//! by `enrich`), and the message template that context is rendered with.
//!
//! A template is text with six placeholders, `[message]`, `[operatingSystem]`, `[browser]`,
//! `[countryCode]`, `[region]` and `[city]`. Parts that did not resolve collapse cleanly by one
//! rule (see `MessageTemplate`): a template is cut into sections, each starting at a piece of
//! literal text that holds a letter, a digit or an opening bracket (a label such as ` Device: `
//! or ` (`); inside a section placeholders are separated by joiners (other text: spaces and
//! punctuation such as `, `). Text after the template's last placeholder ends its section. An
//! empty placeholder is dropped with the joiner in front of it; a section whose placeholders are
//! all empty is dropped with its label. So `Location: [countryCode], [region], [city]` renders
//! `Location: GB, London` without a region and nothing at all without a location.
//!
//! Pure: may import nothing else from this crate.

use std::fmt;
use std::net::IpAddr;

/// The template used when none is configured for a language (the reference's default).
pub const DEFAULT_TEMPLATE: &str =
    "[message] Device: [operatingSystem] [browser], Location: [countryCode], [region], [city]";

/// Builds the secure message a phone shows from the portal's base message and what is known of
/// the browser that started the sign-in. Never fails: what cannot be resolved is left out.
pub trait SecureMessageContext: Send + Sync {
    /// `base` is the portal's `secure_message` (or `message`); `language` picks the template
    /// (English fallback).
    fn build(
        &self,
        base: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        language: Option<&str>,
    ) -> EnrichedMessage;
}

/// The message to show, and why the location is missing when its lookup failed (for the audit
/// event the caller logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichedMessage {
    pub text: String,
    pub geolocation_failure: Option<GeolocationFailure>,
}

/// Why an address gave no location. Each leaves the location out of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeolocationFailure {
    /// Loopback, private, link-local and other addresses no database can place.
    NonPublicAddress,
    /// The database has no record for the address.
    NotFound,
    /// The record has no country.
    Incomplete,
    /// The record could not be decoded (a damaged database).
    Unreadable(String),
}

impl GeolocationFailure {
    /// A short, stable reason for logs and audit events.
    pub fn as_str(&self) -> &'static str {
        match self {
            GeolocationFailure::NonPublicAddress => "non_public_address",
            GeolocationFailure::NotFound => "address_not_found",
            GeolocationFailure::Incomplete => "incomplete_record",
            GeolocationFailure::Unreadable(_) => "unreadable_record",
        }
    }
}

impl fmt::Display for GeolocationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GeolocationFailure::Unreadable(cause) => write!(f, "unreadable_record: {cause}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// A value the template can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placeholder {
    Message,
    OperatingSystem,
    Browser,
    CountryCode,
    Region,
    City,
}

impl Placeholder {
    pub const ALL: [Placeholder; 6] = [
        Placeholder::Message,
        Placeholder::OperatingSystem,
        Placeholder::Browser,
        Placeholder::CountryCode,
        Placeholder::Region,
        Placeholder::City,
    ];

    /// The name between the brackets, as the reference spells it.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Message => "message",
            Placeholder::OperatingSystem => "operatingSystem",
            Placeholder::Browser => "browser",
            Placeholder::CountryCode => "countryCode",
            Placeholder::Region => "region",
            Placeholder::City => "city",
        }
    }

    pub fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The values to fill in; `None` (or empty text) is a part that did not resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextValues {
    pub message: String,
    pub operating_system: Option<String>,
    pub browser: Option<String>,
    pub country_code: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
}

impl ContextValues {
    fn get(&self, placeholder: Placeholder) -> Option<&str> {
        let value = match placeholder {
            Placeholder::Message => Some(&self.message),
            Placeholder::OperatingSystem => self.operating_system.as_ref(),
            Placeholder::Browser => self.browser.as_ref(),
            Placeholder::CountryCode => self.country_code.as_ref(),
            Placeholder::Region => self.region.as_ref(),
            Placeholder::City => self.city.as_ref(),
        };
        value.map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// Why a template text cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder '[{0}]' (expected one of {known})", known = known_placeholders())]
    UnknownPlaceholder(String),
    #[error("no [message] placeholder, so the portal's message would not be shown")]
    NoMessage,
}

fn known_placeholders() -> String {
    Placeholder::ALL
        .iter()
        .map(|p| format!("[{}]", p.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A placeholder and the joiner text written before it when it is not the first shown value of
/// its section.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    joiner: String,
    placeholder: Placeholder,
}

/// A label and the placeholders it introduces (see the module doc for the collapse rule).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Section {
    label: String,
    slots: Vec<Slot>,
    /// Text after the last placeholder of the template, when it is only punctuation.
    tail: String,
}

/// A parsed template, checked once at config load and rendered on every enriched init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTemplate {
    sections: Vec<Section>,
}

enum Token {
    Text(String),
    Slot(Placeholder),
}

impl MessageTemplate {
    /// `[name]` with `name` made of ASCII letters and digits is a placeholder and must be one
    /// of the six; any other bracket is literal text.
    pub fn parse(text: &str) -> Result<MessageTemplate, TemplateError> {
        let tokens = tokenize(text)?;
        if !tokens
            .iter()
            .any(|t| matches!(t, Token::Slot(Placeholder::Message)))
        {
            return Err(TemplateError::NoMessage);
        }
        let mut sections = vec![Section::default()];
        let mut pending = String::new();
        for token in tokens {
            let Some(section) = sections.last_mut() else {
                continue;
            };
            match token {
                Token::Slot(placeholder) => {
                    let joiner = std::mem::take(&mut pending);
                    if section.slots.is_empty() {
                        // Text before a section's first placeholder is its label.
                        section.label.push_str(&joiner);
                        section.slots.push(Slot {
                            joiner: String::new(),
                            placeholder,
                        });
                    } else {
                        section.slots.push(Slot {
                            joiner,
                            placeholder,
                        });
                    }
                }
                Token::Text(text) if is_label(&text) && !section.slots.is_empty() => {
                    sections.push(Section {
                        label: text,
                        ..Section::default()
                    });
                }
                Token::Text(text) => pending.push_str(&text),
            }
        }
        if let Some(section) = sections.last_mut() {
            if section.slots.is_empty() {
                // A template that ends in a label: it is shown with the section before it.
                let trailing = std::mem::take(&mut section.label);
                sections.pop();
                if let Some(previous) = sections.last_mut() {
                    previous.tail = trailing + &pending;
                }
            } else {
                section.tail = pending;
            }
        }
        Ok(MessageTemplate { sections })
    }

    /// Fills in `values`; parts without a value collapse (module doc). Leading and trailing
    /// white space is trimmed.
    pub fn render(&self, values: &ContextValues) -> String {
        let mut out = String::new();
        for section in &self.sections {
            let mut shown = section
                .slots
                .iter()
                .filter_map(|slot| values.get(slot.placeholder).map(|value| (slot, value)));
            let Some((_, first)) = shown.next() else {
                continue;
            };
            out.push_str(&section.label);
            out.push_str(first);
            for (slot, value) in shown {
                out.push_str(&slot.joiner);
                out.push_str(value);
            }
            out.push_str(&section.tail);
        }
        out.trim().to_owned()
    }

    /// Whether the template shows `placeholder` at all.
    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.sections
            .iter()
            .flat_map(|s| &s.slots)
            .any(|slot| slot.placeholder == placeholder)
    }
}

/// Text that names something (holds a letter or digit) or opens a bracket starts a section;
/// other text (spaces and punctuation) joins the values inside one.
fn is_label(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_alphanumeric() || matches!(c, '(' | '[' | '{'))
}

fn tokenize(text: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        literal.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with(']') {
            let name = &after[..name_len];
            let placeholder = Placeholder::from_name(name)
                .ok_or_else(|| TemplateError::UnknownPlaceholder(name.to_owned()))?;
            if !literal.is_empty() {
                tokens.push(Token::Text(std::mem::take(&mut literal)));
            }
            tokens.push(Token::Slot(placeholder));
            rest = &after[name_len + 1..];
        } else {
            literal.push('[');
            rest = after;
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        tokens.push(Token::Text(literal));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ContextValues {
        ContextValues {
            message: "Pay 10 EUR".into(),
            operating_system: Some("Mac OSX".into()),
            browser: Some("Chrome".into()),
            country_code: Some("GB".into()),
            region: Some("England".into()),
            city: Some("London".into()),
        }
    }

    fn default_template() -> MessageTemplate {
        MessageTemplate::parse(DEFAULT_TEMPLATE).unwrap()
    }

    #[test]
    fn the_default_template_shows_every_part() {
        assert_eq!(
            default_template().render(&full()),
            "Pay 10 EUR Device: Mac OSX Chrome, Location: GB, England, London"
        );
    }

    #[test]
    fn missing_parts_collapse_without_dangling_separators() {
        let t = default_template();
        let render = |edit: fn(&mut ContextValues)| {
            let mut values = full();
            edit(&mut values);
            t.render(&values)
        };
        assert_eq!(
            render(|v| v.region = None),
            "Pay 10 EUR Device: Mac OSX Chrome, Location: GB, London"
        );
        assert_eq!(
            render(|v| {
                v.region = None;
                v.city = None;
            }),
            "Pay 10 EUR Device: Mac OSX Chrome, Location: GB"
        );
        assert_eq!(
            render(|v| v.country_code = None),
            "Pay 10 EUR Device: Mac OSX Chrome, Location: England, London"
        );
        assert_eq!(
            render(|v| {
                v.country_code = None;
                v.region = None;
                v.city = None;
            }),
            "Pay 10 EUR Device: Mac OSX Chrome"
        );
        assert_eq!(
            render(|v| v.operating_system = None),
            "Pay 10 EUR Device: Chrome, Location: GB, England, London"
        );
        assert_eq!(
            render(|v| {
                v.operating_system = None;
                v.browser = None;
            }),
            "Pay 10 EUR, Location: GB, England, London"
        );
        // Blank values count as missing.
        assert_eq!(
            render(|v| {
                v.operating_system = Some("  ".into());
                v.browser = Some(String::new());
                v.city = None;
                v.region = None;
                v.country_code = None;
            }),
            "Pay 10 EUR"
        );
    }

    #[test]
    fn the_reference_example_with_reordered_parts() {
        let t =
            MessageTemplate::parse("[message] using [browser] from [city], [countryCode]").unwrap();
        let mut values = full();
        values.message = "You are logging into the XYZ portal".into();
        assert_eq!(
            t.render(&values),
            "You are logging into the XYZ portal using Chrome from London, GB"
        );
        values.browser = None;
        values.city = None;
        assert_eq!(
            t.render(&values),
            "You are logging into the XYZ portal from GB"
        );
    }

    #[test]
    fn a_trailing_text_is_shown_with_its_section() {
        let t = MessageTemplate::parse("[message] ([city]).").unwrap();
        assert_eq!(t.render(&full()), "Pay 10 EUR (London).");
        let mut values = full();
        values.city = None;
        assert_eq!(t.render(&values), "Pay 10 EUR");

        let t = MessageTemplate::parse("[message] ([countryCode], [city]).").unwrap();
        assert_eq!(t.render(&full()), "Pay 10 EUR (GB, London).");
        values.country_code = None;
        assert_eq!(t.render(&values), "Pay 10 EUR");
        values = full();
        values.city = None;
        assert_eq!(t.render(&values), "Pay 10 EUR (GB).");

        let t = MessageTemplate::parse("[message] from [city] - thanks").unwrap();
        assert_eq!(t.render(&full()), "Pay 10 EUR from London - thanks");
    }

    #[test]
    fn other_brackets_are_text_and_values_are_not_parsed_again() {
        let t = MessageTemplate::parse("[message] [x-y] [ [city]").unwrap();
        let mut values = full();
        values.message = "[city]".into();
        assert_eq!(t.render(&values), "[city] [x-y] [ London");
    }

    #[test]
    fn unknown_placeholders_and_templates_without_the_message_are_refused() {
        assert_eq!(
            MessageTemplate::parse("[message] [os]"),
            Err(TemplateError::UnknownPlaceholder("os".into()))
        );
        assert_eq!(
            MessageTemplate::parse("[Message] [city]"),
            Err(TemplateError::UnknownPlaceholder("Message".into()))
        );
        assert_eq!(
            MessageTemplate::parse("Device: [browser]"),
            Err(TemplateError::NoMessage)
        );
        let error = MessageTemplate::parse("[message] [os]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("[operatingSystem]"), "{error}");
    }

    #[test]
    fn uses_tells_which_parts_a_template_needs() {
        let t = MessageTemplate::parse("[message] from [city]").unwrap();
        assert!(t.uses(Placeholder::City));
        assert!(!t.uses(Placeholder::Browser));
        assert!(default_template().uses(Placeholder::Browser));
    }

    #[test]
    fn failures_have_stable_reasons() {
        assert_eq!(
            GeolocationFailure::NonPublicAddress.as_str(),
            "non_public_address"
        );
        assert_eq!(
            GeolocationFailure::Unreadable("bad pointer".into()).to_string(),
            "unreadable_record: bad pointer"
        );
    }
}
