//! The device part of the secure-message context: operating system and browser names parsed
//! from the `user_agent` the portal passes at init, with `woothee` (pure code, no data file).
//!
//! Only names are shown (`Mac OSX`, `Chrome`), never versions: modern browsers freeze most of
//! their version and platform numbers in the user agent (macOS stays `10_15_7`), so a version
//! would mislead more than help the user who checks where a sign-in comes from. Every value
//! comes from woothee's fixed dataset, never from the raw header, so the message cannot be
//! injected through it.
//!
//! May import: nothing internal.

/// Longer headers are cut before parsing: the names sit near the start, and parsing cost stays
/// bounded whatever a client sends.
const MAX_PARSED_LENGTH: usize = 1024;

/// woothee's spelling of a value it could not find.
const UNKNOWN: &str = "UNKNOWN";

/// What a user agent says about the device; `None` where it says nothing recognisable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceContext {
    pub operating_system: Option<String>,
    pub browser: Option<String>,
}

/// Parses a raw `User-Agent` value.
pub fn parse(user_agent: &str) -> DeviceContext {
    let agent = truncate(user_agent.trim(), MAX_PARSED_LENGTH);
    let Some(result) = woothee::parser::Parser::new().parse(agent) else {
        return DeviceContext::default();
    };
    let known = |value: &str| {
        let value = value.trim();
        (!value.is_empty() && value != UNKNOWN).then(|| value.to_owned())
    };
    DeviceContext {
        operating_system: known(result.os),
        browser: known(result.name),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(os: &str, browser: &str) -> DeviceContext {
        DeviceContext {
            operating_system: Some(os.into()),
            browser: Some(browser.into()),
        }
    }

    #[test]
    fn chrome_on_macos() {
        assert_eq!(
            parse(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
            ),
            device("Mac OSX", "Chrome")
        );
    }

    #[test]
    fn safari_on_ios() {
        assert_eq!(
            parse(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
            ),
            device("iPhone", "Safari")
        );
    }

    #[test]
    fn firefox_on_windows() {
        assert_eq!(
            parse(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
            ),
            device("Windows 10", "Firefox")
        );
    }

    #[test]
    fn edge_is_not_mistaken_for_chrome_and_android_is_named() {
        assert_eq!(
            parse(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51"
            ),
            device("Windows 10", "Edge")
        );
        assert_eq!(
            parse(
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
            ),
            device("Android", "Chrome")
        );
    }

    #[test]
    fn garbage_and_empty_values_say_nothing() {
        assert_eq!(parse("garbage ][ %%"), DeviceContext::default());
        assert_eq!(parse(""), DeviceContext::default());
        assert_eq!(parse("-"), DeviceContext::default());
        assert_eq!(parse("   "), DeviceContext::default());
    }

    #[test]
    fn a_library_is_named_without_an_operating_system() {
        assert_eq!(
            parse("curl/8.5.0"),
            DeviceContext {
                operating_system: None,
                browser: Some("HTTP Library".into()),
            }
        );
    }

    #[test]
    fn huge_headers_are_cut_on_a_character_boundary() {
        let long = format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0 {}",
            "é".repeat(5000)
        );
        assert_eq!(parse(&long), device("Windows 10", "Firefox"));
        assert_eq!(truncate("aé", 2), "a");
    }
}
