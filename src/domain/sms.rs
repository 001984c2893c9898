//! SMS rules: what the text holds (the template with every `{code}` replaced, or only the code
//! when the template has no placeholder, plus the origin-bound one-time-code line), and which
//! phone numbers are accepted (international E.164).

use super::auth_type::CODE_PLACEHOLDER;
use super::code::OneTimeCode;

/// The text of one SMS. `origin_host` adds the origin-bound one-time-code line (`@host #code`)
/// that lets browsers offer the code for that site only.
pub fn render_body(template: &str, code: &OneTimeCode, origin_host: Option<&str>) -> String {
    let digits = code.expose();
    let mut body = if template.contains(CODE_PLACEHOLDER) {
        template.replace(CODE_PLACEHOLDER, digits)
    } else {
        // The spec: without the placeholder the SMS holds only the code.
        digits.to_owned()
    };
    if let Some(host) = origin_host {
        body.push_str("\n\n@");
        body.push_str(host);
        body.push_str(" #");
        body.push_str(digits);
    }
    body
}

/// Accepts `+` and 8 to 15 digits (E.164), ignoring spaces, dashes, dots and parentheses that
/// people type; returns the canonical `+digits` form.
pub fn normalize_phone_number(input: &str) -> Option<String> {
    let trimmed = input.trim();
    let rest = trimmed.strip_prefix('+')?;
    let mut digits = String::with_capacity(rest.len() + 1);
    digits.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let count = digits.len() - 1;
    ((8..=15).contains(&count) && !digits[1..].starts_with('0')).then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> OneTimeCode {
        OneTimeCode::parse("042137").unwrap()
    }

    #[test]
    fn every_placeholder_is_replaced() {
        assert_eq!(
            render_body("Code {code}, again: {code}", &code(), None),
            "Code 042137, again: 042137"
        );
    }

    #[test]
    fn a_template_without_placeholder_sends_only_the_code() {
        assert_eq!(render_body("Your code follows", &code(), None), "042137");
    }

    #[test]
    fn origin_bound_line_comes_last() {
        assert_eq!(
            render_body("Your code: {code}", &code(), Some("bank.example")),
            "Your code: 042137\n\n@bank.example #042137"
        );
    }

    #[test]
    fn phone_numbers() {
        assert_eq!(
            normalize_phone_number("+31 6 1234-5678").as_deref(),
            Some("+31612345678")
        );
        assert_eq!(
            normalize_phone_number("+1 (505) 555-1234").as_deref(),
            Some("+15055551234")
        );
        for bad in [
            "0612345678",
            "+",
            "+123",
            "+0123456789",
            "+3161234567890123",
            "+31abc45678",
            "",
        ] {
            assert!(normalize_phone_number(bad).is_none(), "{bad}");
        }
    }
}
