//! Audit events: one structured log line per security-relevant event, named after the reference
//! event catalogue (e.g. `SMS_AUTH_INIT_MESSAGE_SENT`), on the `stepgate::audit` target so they
//! can be routed apart. They never carry a code, a secret or a full phone number.

/// One audit event. Build it with the fields that apply, then `emit`.
#[derive(Debug, Default)]
pub struct AuditEvent<'a> {
    pub event: &'static str,
    pub transaction_id: Option<&'a str>,
    pub auth_type: Option<&'a str>,
    pub method: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// A masked phone number (see `mask_phone`).
    pub phone: Option<String>,
    pub detail: Option<&'a str>,
}

impl AuditEvent<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "stepgate::audit",
            event = self.event,
            transaction_id = self.transaction_id,
            auth_type = self.auth_type,
            method = self.method,
            user_id = self.user_id,
            client_id = self.client_id,
            phone = self.phone.as_deref(),
            detail = self.detail,
            "audit"
        );
    }
}

/// Keeps the country prefix's first characters and the last two digits: enough to tell numbers
/// apart in an investigation, not enough to contact anyone.
pub fn mask_phone(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 5 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_masked() {
        assert_eq!(mask_phone("+31612345678"), "+31*******78");
        assert_eq!(mask_phone("12345"), "*****");
    }
}
