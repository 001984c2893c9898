//! Where SMS may go (the SMS-pumping guard's destination rules): the E.164 country calling code of
//! a number, an optional allow-list of prefixes, and a deny-list of prefixes that by default holds
//! the premium-rate and international-network ranges (`DEFAULT_DENIED_PREFIXES`) that SMS pumping
//! (artificially inflated traffic) targets.

/// Shipped deny-list, documented in the README. International networks and services that no
/// customer's phone number needs, and national premium-rate ranges.
pub const DEFAULT_DENIED_PREFIXES: &[&str] = &[
    // ITU international networks, satellite and premium services.
    "+870", // Inmarsat SNAC
    "+871", "+872", "+873", "+874", // former Inmarsat ocean regions
    "+878", // Universal Personal Telecommunications
    "+881", // Global Mobile Satellite System (Iridium, Globalstar, ...)
    "+882", "+883", // International Networks (carrier ranges sold for premium traffic)
    "+888", // OCHA (telecommunications for disaster relief)
    "+979", // International Premium Rate Service
    "+991", // ITU trial service
    "+800", "+808", // international freephone and shared-cost numbers (take no SMS)
    // National premium-rate ranges.
    "+1900", "+1976", // NANP premium
    "+4470", "+4487", "+4490", "+4491", "+4498", // UK personal numbering, premium, adult
    "+3190", // NL 090x
    "+3290", // BE 090x
    "+3389", // FR 089x
    "+34803", "+34806", "+34807", "+34905", // ES premium
    "+39899", "+39892", "+39895", // IT premium
    "+41900", "+41901", "+41906", // CH premium
    "+43900", "+43930", // AT premium
    "+49900", "+49137", // DE premium, mass calling
    "+35315", // IE premium
    "+46900", "+46939", "+46944", // SE premium
    "+4590",  // DK premium
];

/// Two-digit country calling codes (ITU-T E.164 assignments); the others are `1` and `7` (one
/// digit) or three digits.
const TWO_DIGIT_CODES: &[&str] = &[
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47",
    "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65",
    "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
];

/// The country calling code of a normalized `+digits` number, with its `+` (`+31`, `+1`, `+358`).
pub fn country_code(e164: &str) -> &str {
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    let length = if digits.starts_with('1') || digits.starts_with('7') {
        1
    } else if digits
        .get(..2)
        .is_some_and(|two| TWO_DIGIT_CODES.contains(&two))
    {
        2
    } else {
        3
    };
    let end = (length + 1).min(e164.len());
    e164.get(..end).unwrap_or(e164)
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationRefused {
    #[error("the number is in a denied range ({0})")]
    Denied(String),
    #[error("the number's country is not allowed")]
    NotAllowed,
}

impl DestinationRefused {
    /// A fixed name for metrics and audit.
    pub fn as_str(&self) -> &'static str {
        match self {
            DestinationRefused::Denied(_) => "sms_destination_denied",
            DestinationRefused::NotAllowed => "sms_destination_not_allowed",
        }
    }
}

/// The configured destination rules: prefixes as `+digits`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationRules {
    /// Empty: every destination not denied. Otherwise only numbers starting with one of these.
    pub allowed: Vec<String>,
    pub denied: Vec<String>,
}

impl DestinationRules {
    /// The shipped deny-list and no allow-list.
    pub fn shipped() -> Self {
        Self {
            allowed: Vec::new(),
            denied: DEFAULT_DENIED_PREFIXES
                .iter()
                .map(|prefix| (*prefix).to_owned())
                .collect(),
        }
    }

    /// Whether an SMS may go to the normalized number `e164`. The deny-list wins over the
    /// allow-list, so an allowed country's premium range stays refused.
    pub fn check(&self, e164: &str) -> Result<(), DestinationRefused> {
        if let Some(prefix) = self
            .denied
            .iter()
            .find(|prefix| e164.starts_with(prefix.as_str()))
        {
            return Err(DestinationRefused::Denied(prefix.clone()));
        }
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|prefix| e164.starts_with(prefix.as_str()))
        {
            return Err(DestinationRefused::NotAllowed);
        }
        Ok(())
    }
}

/// Whether `text` is a prefix as the rules take it: `+` and 1 to 15 digits, not starting with 0.
pub fn is_prefix(text: &str) -> bool {
    text.strip_prefix('+').is_some_and(|digits| {
        (1..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_have_one_two_or_three_digits() {
        for (number, code) in [
            ("+14155550100", "+1"),
            ("+79161234567", "+7"),
            ("+31612345678", "+31"),
            ("+447700900123", "+44"),
            ("+358401234567", "+358"),
            ("+8816312345678", "+881"),
            ("+35312345678", "+353"),
        ] {
            assert_eq!(country_code(number), code, "{number}");
        }
    }

    #[test]
    fn premium_and_network_ranges_are_denied_by_default() {
        let rules = DestinationRules::shipped();
        for number in [
            "+8816312345678",
            "+88239912345",
            "+31906123456",
            "+19005550100",
            "+447000123456",
        ] {
            assert!(
                matches!(rules.check(number), Err(DestinationRefused::Denied(_))),
                "{number}"
            );
        }
        for number in [
            "+31612345678",
            "+447700900123",
            "+14155550100",
            "+4915112345678",
        ] {
            assert_eq!(rules.check(number), Ok(()), "{number}");
        }
    }

    #[test]
    fn an_allow_list_admits_its_countries_only_and_the_deny_list_still_wins() {
        let rules = DestinationRules {
            allowed: vec!["+31".into(), "+32".into()],
            ..DestinationRules::shipped()
        };
        assert_eq!(rules.check("+31612345678"), Ok(()));
        assert_eq!(rules.check("+32470123456"), Ok(()));
        assert_eq!(
            rules.check("+447700900123"),
            Err(DestinationRefused::NotAllowed)
        );
        assert_eq!(
            rules.check("+31906123456"),
            Err(DestinationRefused::Denied("+3190".into()))
        );
    }

    #[test]
    fn prefixes_are_plus_and_digits() {
        assert!(is_prefix("+31"));
        assert!(is_prefix("+8816"));
        assert!(!is_prefix("31"));
        assert!(!is_prefix("+"));
        assert!(!is_prefix("+0"));
        assert!(!is_prefix("+3a"));
        assert!(
            DEFAULT_DENIED_PREFIXES
                .iter()
                .all(|prefix| is_prefix(prefix))
        );
    }
}
