//! The values a policy message shows, read from the held request exactly as the app will read
//! it, or not at all: a field the message names that appears twice (`amount=1&amount=99999`:
//! PHP, Django and Rails take the last, others the first), a form field also in the query
//! string (Rails and PHP's `$_REQUEST` merge them), a duplicated header, two `Content-Type`
//! headers, or a body whose type cannot be read as a form or a JSON object make the request
//! ambiguous, and it is refused before anything is sent to the user.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::domain::held::OriginalRequest;
use crate::domain::policy::BoundField;
use crate::service::stepup::{fill_message, placeholder_value};

/// Why the message cannot be filled from one reading of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum AmbiguousMessage {
    DuplicateField,
    TwoContentTypes,
    UnreadableBody,
    /// A value the approval binds is missing, empty, not a plain value, or would not be shown
    /// in full by the message.
    BoundValueNotShown,
}

impl AmbiguousMessage {
    /// What the client is told (and the log says).
    pub fn reason(self) -> &'static str {
        match self {
            Self::DuplicateField => "a field the confirmation shows appears more than once",
            Self::TwoContentTypes => "the request has more than one Content-Type",
            Self::UnreadableBody => {
                "the body cannot be read unambiguously as a form or a JSON object"
            }
            Self::BoundValueNotShown => {
                "a value the confirmation is bound to is missing or cannot be shown in full"
            }
        }
    }
}

/// The filled message; `Err` when the request could be read two ways for it.
pub fn fill(
    template: &str,
    original: &OriginalRequest,
    max_chars: usize,
) -> Result<String, AmbiguousMessage> {
    let names = placeholders(template);
    let reading = read(&names, original)?;
    Ok(fill_message(
        template,
        &reading.form,
        &reading.query,
        &reading.headers,
        max_chars,
    ))
}

/// The values of the request parts `fields` names, `(label, value)` in their order, read by
/// the same rules as the message (refused when ambiguous), each of which `shown` (the filled
/// message) must show in full: what the user approves is exactly what is bound. A missing or
/// empty field, or a JSON member that is no plain value, is refused. The body binds as the hex
/// SHA-256 of its bytes.
pub fn bound_values(
    fields: &[BoundField],
    original: &OriginalRequest,
    shown: &str,
) -> Result<Vec<(String, String)>, AmbiguousMessage> {
    let labels: Vec<String> = fields.iter().map(BoundField::label).collect();
    let names: Vec<(&str, &str)> = labels
        .iter()
        .filter_map(|label| label.split_once('.'))
        .collect();
    let reading = read(&names, original)?;
    fields
        .iter()
        .zip(&labels)
        .map(|(field, label)| {
            if *field == BoundField::Body {
                use sha2::Digest as _;
                let digest = hex::encode(sha2::Sha256::digest(&original.body));
                return Ok((label.clone(), digest));
            }
            let value = label
                .split_once('.')
                .and_then(|(source, name)| {
                    placeholder_value(
                        source,
                        name,
                        &reading.form,
                        &reading.query,
                        &reading.headers,
                    )
                })
                .unwrap_or_default();
            if value.is_empty() || !shown.contains(value) {
                return Err(AmbiguousMessage::BoundValueNotShown);
            }
            Ok((label.clone(), value.to_owned()))
        })
        .collect()
}

/// The request's form, query and headers as far as `names` need them.
struct Reading {
    form: Vec<(String, String)>,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

/// Reads what `names` (`(source, name)` pairs) need, refusing a request that could be read
/// two ways for them.
fn read(names: &[(&str, &str)], original: &OriginalRequest) -> Result<Reading, AmbiguousMessage> {
    let headers: Vec<(String, String)> = original
        .headers
        .iter()
        .filter_map(|(n, v)| {
            std::str::from_utf8(v)
                .ok()
                .map(|v| (n.clone(), v.to_owned()))
        })
        .collect();
    let mut content_types = original
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    let content_type = content_types.next().map(|(_, v)| v.as_slice());
    if content_types.next().is_some() {
        return Err(AmbiguousMessage::TwoContentTypes);
    }
    let wants = |source: &str| names.iter().any(|(s, _)| *s == source);
    let query: Vec<(String, String)> = match original.uri.split_once('?') {
        Some((_, q)) if wants("query") || wants("form") => {
            serde_urlencoded::from_str(q).map_err(|_| AmbiguousMessage::UnreadableBody)?
        }
        _ => Vec::new(),
    };
    let form = if wants("form") {
        form_fields(content_type, &original.body)?
    } else {
        Vec::new()
    };
    for (source, name) in names {
        let count = |list: &[(String, String)], case_blind: bool| {
            list.iter()
                .filter(|(key, _)| {
                    if case_blind {
                        key.eq_ignore_ascii_case(name)
                    } else {
                        key == name
                    }
                })
                .count()
        };
        let ambiguous = match *source {
            "form" => count(&form, false) > 1 || count(&query, false) > 0,
            "query" => count(&query, false) > 1,
            "header" => count(&headers, true) > 1,
            _ => false,
        };
        if ambiguous {
            return Err(AmbiguousMessage::DuplicateField);
        }
    }
    Ok(Reading {
        form,
        query,
        headers,
    })
}

/// `(source, name)` of every `{source.name}` in the template.
fn placeholders(template: &str) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        if let Some(pair) = after[..close].split_once('.') {
            found.push(pair);
        }
        rest = &after[close + 1..];
    }
    found
}

/// The body's fields: a urlencoded form, or a JSON object's top-level string and number
/// members. An empty body has none; any other body the message would read is refused.
fn form_fields(
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<Vec<(String, String)>, AmbiguousMessage> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let media = content_type
        .and_then(|ct| std::str::from_utf8(ct).ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .ok_or(AmbiguousMessage::UnreadableBody)?;
    match media.as_str() {
        "application/x-www-form-urlencoded" => {
            serde_urlencoded::from_bytes(body).map_err(|_| AmbiguousMessage::UnreadableBody)
        }
        "application/json" => json_members(body),
        _ => Err(AmbiguousMessage::UnreadableBody),
    }
}

/// Top-level members of a JSON object, every duplicate kept (serde_json's maps keep one).
fn json_members(body: &[u8]) -> Result<Vec<(String, String)>, AmbiguousMessage> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(entry) = map.next_entry::<String, Value>()? {
                members.push(entry);
            }
            Ok(members)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let members = deserializer
        .deserialize_map(Members)
        .map_err(|_| AmbiguousMessage::UnreadableBody)?;
    deserializer
        .end()
        .map_err(|_| AmbiguousMessage::UnreadableBody)?;
    Ok(members
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(text) => text,
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                // Objects and arrays are not shown; they still count as the field.
                _ => String::new(),
            };
            (key, text)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "Pay {form.amount} to {form.iban}";

    fn held(uri: &str, content_type: Option<&str>, body: &str) -> OriginalRequest {
        let mut headers = vec![("host".to_owned(), b"bank.example".to_vec())];
        if let Some(ct) = content_type {
            headers.push(("content-type".to_owned(), ct.as_bytes().to_vec()));
        }
        OriginalRequest {
            method: "POST".into(),
            uri: uri.into(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn one_reading_fills_the_message() {
        let form = held("/transfer", FORM, "amount=10&iban=NL91");
        assert_eq!(fill(TEMPLATE, &form, 200).unwrap(), "Pay 10 to NL91");
        let json = held(
            "/transfer",
            Some("application/json; charset=utf-8"),
            r#"{"amount": 10, "iban": "NL91"}"#,
        );
        assert_eq!(fill(TEMPLATE, &json, 200).unwrap(), "Pay 10 to NL91");
        // Fields the message does not show may repeat.
        let other = held("/transfer?x=1&x=2", FORM, "amount=1&iban=A&tag=a&tag=b");
        assert_eq!(fill(TEMPLATE, &other, 200).unwrap(), "Pay 1 to A");
    }

    #[test]
    fn two_readings_are_refused() {
        let cases = [
            held(
                "/transfer",
                FORM,
                "amount=1&iban=GOOD&amount=99999&iban=EVIL",
            ),
            held("/transfer?amount=99999", FORM, "amount=1&iban=GOOD"),
            held(
                "/transfer",
                Some("application/json"),
                r#"{"amount": 1, "iban": "GOOD", "amount": 99999}"#,
            ),
        ];
        for case in &cases {
            assert_eq!(
                fill(TEMPLATE, case, 200),
                Err(AmbiguousMessage::DuplicateField),
                "{case:?}"
            );
        }
        for (ct, body) in [
            (Some("multipart/form-data; boundary=x"), "--x--"),
            (None, "amount=1"),
            (Some("text/plain"), "amount=1"),
            (Some("application/json"), "[1]"),
            (Some("application/json"), r#"{"amount": 1} {"amount": 2}"#),
        ] {
            assert_eq!(
                fill(TEMPLATE, &held("/transfer", ct, body), 200),
                Err(AmbiguousMessage::UnreadableBody),
                "{ct:?} {body}"
            );
        }
        let mut two = held("/transfer", FORM, "amount=1&iban=A");
        two.headers
            .push(("Content-Type".to_owned(), b"application/json".to_vec()));
        assert_eq!(
            fill(TEMPLATE, &two, 200),
            Err(AmbiguousMessage::TwoContentTypes)
        );
        let mut headers = held("/transfer", None, "");
        headers.headers.push(("x-ref".into(), b"a".to_vec()));
        headers.headers.push(("X-Ref".into(), b"b".to_vec()));
        assert_eq!(
            fill("Ref {header.x-ref}", &headers, 200),
            Err(AmbiguousMessage::DuplicateField)
        );
        assert_eq!(
            fill("Ref {query.r}", &held("/t?r=1&r=2", None, ""), 200),
            Err(AmbiguousMessage::DuplicateField)
        );
    }
}
