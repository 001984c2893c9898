//! The bank's HTML: one layout, a stylesheet served from `/style.css` (no inline styles or
//! scripts), and an escape for every value that came from a request.

use std::fmt::Write;

use super::{Account, Transfer};
use crate::demo::session::Claims;

pub const STYLE: &str = "\
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f6f8; color: #1d2733; }
header { background: #0b4f6c; color: #fff; padding: 0.8rem 1.5rem; }
header small { opacity: 0.8; margin-left: 0.5rem; }
main { max-width: 34rem; margin: 2rem auto; background: #fff; padding: 1.5rem 2rem; border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,0.12); }
label { display: block; margin-top: 0.8rem; font-weight: 600; }
input { width: 100%; box-sizing: border-box; padding: 0.5rem; margin-top: 0.3rem; font-size: 1rem; }
button { margin-top: 1rem; padding: 0.55rem 1.2rem; font-size: 1rem; background: #0b4f6c; color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
button.link { background: none; color: #0b4f6c; padding: 0; text-decoration: underline; }
.note { color: #56606b; font-size: 0.9rem; }
.error { color: #a4161a; font-weight: 600; }
.balance { font-size: 1.4rem; }
";

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `1234` cents as `12.34`.
pub fn euros(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Demo Bank: {title}</title><link rel=\"stylesheet\" href=\"/style.css\"></head>\
         <body><header><strong>Demo Bank</strong><small>a demo app behind stepgate</small></header>\
         <main>{body}</main></body></html>\n",
        title = escape(title)
    )
}

/// The sign-in form, prefilled; `error` above it when the last try was refused.
pub fn login(user: &str, phone: &str, error: Option<&str>) -> String {
    let error = error
        .map(|text| format!("<p class=\"error\">{}</p>", escape(text)))
        .unwrap_or_default();
    layout(
        "Sign in",
        &format!(
            "<h1>Sign in</h1>{error}\
             <form method=\"post\" action=\"/login\">\
             <label for=\"user\">User name</label>\
             <input id=\"user\" name=\"user\" value=\"{user}\" required autocomplete=\"username\">\
             <label for=\"phone_number\">Phone number (E.164, where the SMS code goes)</label>\
             <input id=\"phone_number\" name=\"phone_number\" value=\"{phone}\" required inputmode=\"tel\">\
             <button id=\"login-button\" type=\"submit\">Sign in</button></form>\
             <p class=\"note\">No password: this bank trusts anyone. stepgate is what guards the transfers.</p>",
            user = escape(user),
            phone = escape(phone),
        ),
    )
}

/// The account: balance, the transfer form, what the bank has received.
pub fn account(who: &Claims, account: &Account, received: u64, error: Option<&str>) -> String {
    let error = error
        .map(|text| format!("<p class=\"error\">{}</p>", escape(text)))
        .unwrap_or_default();
    let mut recent = String::new();
    if !account.recent.is_empty() {
        recent.push_str("<h2>Your latest transfers</h2><ul id=\"transfers\">");
        for transfer in account.recent.iter().rev() {
            let _ = write!(
                recent,
                "<li>{} EUR to {}</li>",
                euros(transfer.cents),
                escape(&transfer.iban)
            );
        }
        recent.push_str("</ul>");
    }
    layout(
        "Account",
        &format!(
            "<h1>Hello, {user}</h1>\
             <p class=\"note\">Signed in with phone number {phone}.</p>\
             <p class=\"balance\">Balance: <strong id=\"balance\">{balance} EUR</strong></p>\
             <h2>Transfer money</h2>{error}\
             <form method=\"post\" action=\"/transfer\">\
             <label for=\"amount\">Amount (EUR)</label>\
             <input id=\"amount\" name=\"amount\" value=\"10.00\" required inputmode=\"decimal\">\
             <label for=\"iban\">To IBAN</label>\
             <input id=\"iban\" name=\"iban\" value=\"NL91ABNA0417164300\" required>\
             <button id=\"transfer-button\" type=\"submit\">Transfer</button></form>\
             <p class=\"note\">stepgate stands in front of this bank: before this form reaches it, \
             you approve the transfer with a code sent by SMS.</p>\
             {received_line}{recent}\
             <form method=\"post\" action=\"/logout\"><button class=\"link\" id=\"logout-button\" type=\"submit\">Sign out</button></form>",
            user = escape(&who.sub),
            phone = escape(&who.phone_number),
            balance = euros(account.balance_cents()),
            received_line = received_line(received),
        ),
    )
}

fn received_line(received: u64) -> String {
    format!("<p>Transfers received by the bank: <strong id=\"received\">{received}</strong></p>")
}

/// The confirmation of one transfer.
pub fn transferred(
    transfer: &Transfer,
    balance_cents: u64,
    received: u64,
    step_up: Option<&str>,
) -> String {
    let step_up = step_up
        .map(|line| format!("<p id=\"step-up\">{}</p>", escape(line)))
        .unwrap_or_default();
    layout(
        "Transferred",
        &format!(
            "<h1 id=\"confirmation\">Transferred {amount} EUR to {iban}</h1>\
             <p>New balance: {balance} EUR</p>{received_line}{step_up}\
             <p><a href=\"/account\">Back to your account</a></p>",
            amount = euros(transfer.cents),
            iban = escape(&transfer.iban),
            balance = euros(balance_cents),
            received_line = received_line(received),
        ),
    )
}

/// Shown when a request needs a session and has none.
pub fn signed_out() -> String {
    layout(
        "Signed out",
        "<h1>Please sign in</h1><p><a href=\"/\">Sign in</a> first.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_amounts_formatted() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(euros(1005), "10.05");
        assert_eq!(euros(7), "0.07");
        let page = login("<script>", "+31", Some("bad <b>"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("bad &lt;b&gt;"));
    }
}
