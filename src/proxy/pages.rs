//! The interstitial pages the proxy serves under `/.stepgate/`: the challenge page (SMS code form,
//! push waiting page, OTP QR page), the short message page for errors and outcomes, the inline QR
//! SVG, and the static script and stylesheet those pages load.
//!
//! Pure rendering: functions that turn plain values into HTML strings. It may import nothing
//! internal (only `qrcode`); the proxy decides what to show and with which status code.
//!
//! Every page is served with [`CONTENT_SECURITY_POLICY`], so nothing here is inline: no `<script>`
//! bodies, no `style=` attributes, no `on*=` handlers. Every dynamic value is HTML-escaped, and the
//! transaction id is also percent-encoded where it becomes part of a URL path.

/// Where [`SCRIPT`] is served.
pub const SCRIPT_PATH: &str = "/.stepgate/assets/stepgate.js";
/// Where [`STYLE`] is served.
pub const STYLE_PATH: &str = "/.stepgate/assets/stepgate.css";
/// `Content-Type` of every page rendered here.
pub const HTML_CONTENT_TYPE: &str = "text/html; charset=utf-8";
/// `Content-Type` of [`SCRIPT`].
pub const SCRIPT_CONTENT_TYPE: &str = "text/javascript; charset=utf-8";
/// `Content-Type` of [`STYLE`].
pub const STYLE_CONTENT_TYPE: &str = "text/css; charset=utf-8";

/// The `Content-Security-Policy` every page is served with. No inline script or style;
/// `connect-src 'self'` lets the script poll the status endpoint. The inline QR SVG only uses
/// presentation attributes (`fill`), which `style-src` does not govern.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The title of every challenge page.
const CHALLENGE_TITLE: &str = "Confirm it’s you — stepgate";

/// How the step-up is done, for the page shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageMethod {
    Sms,
    Push,
    Otp,
}

/// Everything the challenge page shows. All strings are plain text; rendering escapes them.
#[derive(Debug, Clone)]
pub struct ChallengeView<'a> {
    pub transaction_id: &'a str,
    pub method: PageMethod,
    /// The policy's message with placeholders already filled (plain text).
    pub message: Option<&'a str>,
    pub seconds_left: u64,
    /// Hidden form field `csrf` in every form.
    pub csrf: &'a str,
    /// e.g. "Wrong code, 2 attempts left" (plain text).
    pub error: Option<&'a str>,
    /// Show a "send a new code" button (SMS only), posting to `/.stepgate/tx/{id}/resend`.
    pub can_resend: bool,
    /// OTP only: the deep link to show as a QR code (SVG) and as a link.
    pub otp_link: Option<&'a str>,
    /// Hold mode: the original request is waiting on another connection. The page explains that
    /// it continues by itself; push/OTP pages have no complete form and say "you can close this
    /// tab" once approved.
    pub hold_mode: bool,
    /// Push with number matching: the number the user must type (or pick) on the phone.
    pub number: Option<u8>,
    /// The number is typed on the phone, not picked among three.
    pub number_typed: bool,
}

/// The challenge page for one pending transaction.
///
/// SMS: the code form (`#verify-form`, `#sms_code`, `#verify-button`) and, if allowed, the resend
/// form (`#resend-form`). Push and OTP: `<main data-transaction-id>` so [`SCRIPT`] polls the
/// status, a `#status` live region and (outside hold mode) the `#complete-form` it submits once
/// approved; OTP adds the QR code and the deep link.
pub fn challenge_page(view: &ChallengeView<'_>) -> String {
    let id_html = escape_html(view.transaction_id);
    let tx_path = format!(
        "/.stepgate/tx/{}",
        escape_html(&path_segment(view.transaction_id))
    );
    let csrf_field = format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        escape_html(view.csrf)
    );

    let mut body = String::with_capacity(2048);
    body.push_str("<h1>Confirm it’s you</h1>\n");
    if let Some(message) = view.message {
        body.push_str(&format!(
            "<p id=\"message\" class=\"message\">{}</p>\n",
            escape_html(message)
        ));
    }

    let main_attrs = match view.method {
        PageMethod::Sms => {
            sms_body(&mut body, view, &tx_path, &csrf_field);
            String::from(r#" data-method="sms""#)
        }
        PageMethod::Push | PageMethod::Otp => {
            if let Some(number) = view.number {
                let verb = if view.number_typed { "Type" } else { "Pick" };
                body.push_str(&format!(
                    "<p id=\"number\" class=\"number\">{verb} <strong>{number}</strong> on your phone.</p>\n"
                ));
            }
            live_body(&mut body, view, &tx_path, &csrf_field);
            let method = if view.method == PageMethod::Push {
                "push"
            } else {
                "otp"
            };
            let hold = if view.hold_mode {
                r#" data-hold="true""#
            } else {
                ""
            };
            format!(r#" data-method="{method}" data-transaction-id="{id_html}"{hold}"#)
        }
    };

    body.push_str(&format!(
        "<p id=\"expiry\" class=\"muted\">This request expires in \
         <span id=\"countdown\" data-seconds-left=\"{}\">{}</span>.</p>\n",
        view.seconds_left,
        format_seconds(view.seconds_left)
    ));

    layout(CHALLENGE_TITLE, &main_attrs, &body)
}

/// The SMS part: error, code form, optional resend form.
fn sms_body(body: &mut String, view: &ChallengeView<'_>, tx_path: &str, csrf_field: &str) {
    body.push_str("<p>Enter the 6-digit code we sent you by text message.</p>\n");
    push_error(body, view.error);
    let invalid = if view.error.is_some() {
        r#" aria-invalid="true" aria-describedby="error""#
    } else {
        ""
    };
    body.push_str(&format!(
        "<form id=\"verify-form\" method=\"post\" action=\"{tx_path}/verify\">\n\
         {csrf_field}\n\
         <label for=\"sms_code\">Code</label>\n\
         <input id=\"sms_code\" name=\"sms_code\" type=\"text\" inputmode=\"numeric\" \
         autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" required autofocus{invalid}>\n\
         <button id=\"verify-button\" type=\"submit\">Verify</button>\n\
         </form>\n"
    ));
    if view.can_resend {
        body.push_str(&format!(
            "<form id=\"resend-form\" method=\"post\" action=\"{tx_path}/resend\">\n\
             {csrf_field}\n\
             <button id=\"resend-button\" type=\"submit\" class=\"secondary\">Send a new code</button>\n\
             </form>\n"
        ));
    }
    if view.hold_mode {
        body.push_str(
            "<p class=\"muted\">Your original request continues by itself once the code is \
             accepted. You can then close this tab.</p>\n",
        );
    }
}

/// The push/OTP part: instructions (and QR), live status, complete form.
fn live_body(body: &mut String, view: &ChallengeView<'_>, tx_path: &str, csrf_field: &str) {
    let otp_link = if view.method == PageMethod::Otp {
        view.otp_link
    } else {
        None
    };
    if let Some(link) = otp_link {
        body.push_str("<p>Scan this code with the app on your phone.</p>\n");
        if let Some(qr) = qr_svg(link) {
            body.push_str("<div class=\"qr-box\">");
            body.push_str(&qr);
            body.push_str("</div>\n");
        }
        if is_safe_link(link) {
            body.push_str(&format!(
                "<p class=\"center\">On your phone? <a id=\"otp-link\" href=\"{}\">Open the app</a></p>\n",
                escape_html(link)
            ));
        }
    } else {
        body.push_str("<p>Approve this request on your phone.</p>\n");
    }
    push_error(body, view.error);
    body.push_str(
        "<p id=\"status\" class=\"status\" role=\"status\" aria-live=\"polite\">\
         Waiting for your approval…</p>\n",
    );
    if view.hold_mode {
        body.push_str(
            "<p class=\"muted\">Your original request continues by itself once you approve it. \
             You can then close this tab.</p>\n",
        );
    } else {
        body.push_str(&format!(
            "<form id=\"complete-form\" method=\"post\" action=\"{tx_path}/complete\">\n\
             {csrf_field}\n\
             <p class=\"muted\">This page continues by itself once you have approved. \
             If it does not, press Continue.</p>\n\
             <button id=\"complete-button\" type=\"submit\">Continue</button>\n\
             </form>\n"
        ));
    }
}

fn push_error(body: &mut String, error: Option<&str>) {
    if let Some(error) = error {
        body.push_str(&format!(
            "<p id=\"error\" class=\"error\" role=\"alert\">{}</p>\n",
            escape_html(error)
        ));
    }
}

/// An approved hold-mode request that nobody waits for any more (its connection was closed, or
/// its gate stopped): one button sends it on, from this page.
pub fn continue_page(tx_path: &str, csrf: &str) -> String {
    let body = format!(
        "<h1>Confirmed</h1>\n\
         <p id=\"detail\">Your request was confirmed, but the page that sent it is no longer \
         waiting. Continue it here.</p>\n\
         <form id=\"complete-form\" method=\"post\" action=\"{}/complete\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
         <button id=\"complete-button\" type=\"submit\">Continue</button>\n\
         </form>\n",
        escape_html(tx_path),
        escape_html(csrf)
    );
    layout("Confirmed — stepgate", "", &body)
}

/// A short page for errors and outcomes: a title and one explanatory sentence (plain text).
pub fn message_page(title: &str, detail: &str) -> String {
    let title = escape_html(title);
    let body = format!(
        "<h1>{title}</h1>\n<p id=\"detail\">{}</p>\n",
        escape_html(detail)
    );
    layout(&format!("{title} — stepgate"), "", &body)
}

/// The whole document around `body`. `title_html` and `main_attrs` are already escaped.
fn layout(title_html: &str, main_attrs: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n\
         <html lang=\"en\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <title>{title_html}</title>\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <link rel=\"stylesheet\" href=\"{STYLE_PATH}\">\n\
         <script src=\"{SCRIPT_PATH}\" defer></script>\n\
         </head>\n\
         <body>\n\
         <main class=\"card\"{main_attrs}>\n\
         {body}\
         </main>\n\
         </body>\n\
         </html>\n"
    )
}

/// The QR code of `text` as an inline `<svg>` element (at least 200x200, white quiet zone),
/// without the XML prolog. `None` if the text does not fit in a QR code.
pub fn qr_svg(text: &str) -> Option<String> {
    crate::qr::svg(text)
}

/// `text` with `& < > " '` replaced by entities, safe in element content and quoted attributes.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded as one URL path segment (everything but RFC 3986 unreserved bytes).
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a deep link may become an `href`: script-bearing schemes are refused.
fn is_safe_link(link: &str) -> bool {
    let scheme: String = link
        .trim_start()
        .chars()
        .take_while(|c| *c != ':')
        .filter(|c| !c.is_ascii_whitespace() && !c.is_ascii_control())
        .collect::<String>()
        .to_ascii_lowercase();
    !matches!(scheme.as_str(), "javascript" | "vbscript" | "data")
}

/// `m:ss` for the countdown (minutes may exceed 59).
fn format_seconds(seconds: u64) -> String {
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

/// Served at `/.stepgate/assets/stepgate.js`. Counts down `#countdown`; on pages whose `<main>`
/// has `data-transaction-id`, long-polls the status and submits `#complete-form` once approved
/// (or, in hold mode, says the tab can be closed). Only `fetch`, no libraries.
pub const SCRIPT: &str = r#""use strict";
(function () {
  var FINAL = {
    denied: "The request was denied.",
    expired: "The request has expired. Go back and try again.",
    failed: "The request could not be confirmed. Go back and try again."
  };

  function byId(id) { return document.getElementById(id); }
  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }
  function setStatus(text) { var el = byId("status"); if (el) { el.textContent = text; } }

  function formatSeconds(total) {
    var m = Math.floor(total / 60), s = total % 60;
    return m + ":" + (s < 10 ? "0" : "") + s;
  }

  var countdownTimer = null;
  function stopCountdown() { if (countdownTimer !== null) { clearInterval(countdownTimer); countdownTimer = null; } }

  function startCountdown() {
    var el = byId("countdown");
    if (!el) { return; }
    var left = parseInt(el.getAttribute("data-seconds-left"), 10);
    if (!(left >= 0)) { return; }
    var deadline = Date.now() + left * 1000;
    countdownTimer = setInterval(function () {
      var remaining = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
      el.textContent = formatSeconds(remaining);
      if (remaining === 0) {
        stopCountdown();
        var expiry = byId("expiry");
        if (expiry) { expiry.textContent = "This request has expired."; }
      }
    }, 1000);
  }

  function finish(text) {
    stopCountdown();
    setStatus(text);
    var form = byId("complete-form");
    if (form) { form.hidden = true; }
    var expiry = byId("expiry");
    if (expiry) { expiry.hidden = true; }
  }

  async function poll(id, hold) {
    var url = "/.stepgate/tx/" + encodeURIComponent(id) + "/status?wait=25";
    for (;;) {
      var started = Date.now();
      var body;
      try {
        var response = await fetch(url, {
          method: "GET",
          headers: { "Accept": "application/json" },
          credentials: "same-origin",
          cache: "no-store"
        });
        if (!response.ok) {
          if (response.status >= 500 || response.status === 408 || response.status === 429) {
            await sleep(2000);
            continue;
          }
          finish(FINAL.failed);
          return;
        }
        body = await response.json();
      } catch (e) {
        await sleep(2000);
        continue;
      }
      var status = body && typeof body.status === "string" ? body.status : "pending";
      if (status === "approved") {
        if (hold) {
          finish("Approved. You can close this tab.");
          return;
        }
        stopCountdown();
        setStatus("Approved. Continuing\u2026");
        var form = byId("complete-form");
        if (form) { form.submit(); }
        return;
      }
      if (Object.prototype.hasOwnProperty.call(FINAL, status)) {
        finish(FINAL[status]);
        return;
      }
      // Still pending: ask again, but never more than once a second.
      var elapsed = Date.now() - started;
      if (elapsed < 1000) { await sleep(1000 - elapsed); }
    }
  }

  function start() {
    startCountdown();
    var main = document.querySelector("main[data-transaction-id]");
    if (!main) { return; }
    var id = main.getAttribute("data-transaction-id");
    if (!id) { return; }
    poll(id, main.getAttribute("data-hold") === "true");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
"#;

/// Served at `/.stepgate/assets/stepgate.css`: system font, centered card, light and dark.
pub const STYLE: &str = r#":root {
  color-scheme: light dark;
  --bg: #f3f4f6;
  --card: #ffffff;
  --text: #1c2230;
  --muted: #566074;
  --accent: #1f56d6;
  --accent-text: #ffffff;
  --border: #d5d9e1;
  --error: #a3241b;
  --error-bg: #fdecea;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #111418;
    --card: #1b2027;
    --text: #e8eaef;
    --muted: #a4acba;
    --accent: #80a6ff;
    --accent-text: #0b1020;
    --border: #363d49;
    --error: #ffb4ab;
    --error-bg: #3b1e1b;
  }
}
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body {
  margin: 0;
  min-height: 100vh;
  display: flex;
  align-items: center;
  justify-content: center;
  padding: 1rem;
  background: var(--bg);
  color: var(--text);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
.card {
  width: 100%;
  max-width: 26rem;
  padding: 1.5rem;
  background: var(--card);
  border: 1px solid var(--border);
  border-radius: 12px;
  box-shadow: 0 1px 3px rgba(0, 0, 0, 0.08);
}
h1 { margin: 0 0 1rem; font-size: 1.375rem; line-height: 1.3; }
p { margin: 0 0 1rem; }
.number strong {
  font-size: 2.5rem;
  letter-spacing: 0.1em;
}
.message {
  padding: 0.75rem 1rem;
  font-size: 1.125rem;
  font-weight: 600;
  background: var(--bg);
  border-left: 4px solid var(--accent);
  border-radius: 4px;
  white-space: pre-line;
  overflow-wrap: anywhere;
}
.muted { color: var(--muted); font-size: 0.9375rem; }
.center { text-align: center; }
.status { font-weight: 600; }
.error {
  padding: 0.5rem 0.75rem;
  color: var(--error);
  background: var(--error-bg);
  border-radius: 6px;
}
form { margin: 0 0 1rem; }
label { display: block; margin-bottom: 0.25rem; font-weight: 600; }
input[name="sms_code"] {
  display: block;
  width: 100%;
  margin-bottom: 1rem;
  padding: 0.5rem;
  font: inherit;
  font-size: 1.5rem;
  letter-spacing: 0.3em;
  text-align: center;
  color: var(--text);
  background: var(--card);
  border: 1px solid var(--border);
  border-radius: 8px;
}
button {
  display: block;
  width: 100%;
  padding: 0.75rem 1rem;
  font: inherit;
  font-weight: 600;
  color: var(--accent-text);
  background: var(--accent);
  border: 1px solid var(--accent);
  border-radius: 8px;
  cursor: pointer;
}
button.secondary { color: var(--accent); background: transparent; border-color: var(--border); }
a { color: var(--accent); }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.qr-box { margin: 0 0 1rem; text-align: center; }
.qr { display: inline-block; width: 100%; max-width: 15rem; height: auto; border-radius: 4px; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn view(method: PageMethod) -> ChallengeView<'static> {
        ChallengeView {
            transaction_id: "6f1c2a9e-0000-4000-8000-00000000abcd",
            method,
            message: Some("Approve transfer of 10 EUR to NL91ABNA0417164300"),
            seconds_left: 299,
            csrf: "csrf-token-123",
            error: None,
            can_resend: false,
            otp_link: None,
            hold_mode: false,
            number: None,
            number_typed: false,
        }
    }

    fn forms(page: &str) -> Vec<&str> {
        page.split("<form")
            .skip(1)
            .map(|rest| rest.split("</form>").next().unwrap())
            .collect()
    }

    /// Whether an ` on…=` attribute (an inline event handler) appears inside any tag.
    fn has_event_handler(page: &str) -> bool {
        page.split('<').skip(1).any(|segment| {
            let tag = segment.split('>').next().unwrap();
            tag.split(" on").skip(1).any(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                !name.is_empty() && rest[name.len()..].starts_with('=')
            })
        })
    }

    #[test]
    fn event_handler_check_sees_attributes_only() {
        assert!(has_event_handler(r#"<img src=x onerror=alert(1)>"#));
        assert!(!has_event_handler(
            "<p>&lt;img onerror=alert(1)&gt; on=</p>"
        ));
    }

    fn assert_common(page: &str) {
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains(r#"<html lang="en">"#));
        assert!(page.contains(r#"name="viewport""#));
        assert!(page.contains(r#"<link rel="stylesheet" href="/.stepgate/assets/stepgate.css">"#));
        assert!(page.contains(r#"<script src="/.stepgate/assets/stepgate.js" defer></script>"#));
        assert!(!page.contains("style="), "no inline style under the CSP");
        assert!(
            !has_event_handler(page),
            "no inline handlers under the CSP: {page}"
        );
        for attr in [" src=\"", " href=\""] {
            for rest in page.split(attr).skip(1) {
                assert!(
                    rest.starts_with("/.stepgate/")
                        || rest.starts_with("data:,")
                        || rest.starts_with("stepgate:"),
                    "no external resources: {rest}"
                );
            }
        }
        assert_eq!(page.matches("<script").count(), 1);
    }

    #[test]
    fn escape_html_replaces_the_five_characters() {
        assert_eq!(
            escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("plain €"), "plain €");
    }

    #[test]
    fn a_push_page_shows_the_number_to_pick() {
        let mut v = view(PageMethod::Push);
        assert!(!challenge_page(&v).contains("id=\"number\""));
        v.number = Some(47);
        let page = challenge_page(&v);
        assert!(page.contains("Pick <strong>47</strong> on your phone."));
        assert_common(&page);
        v.number_typed = true;
        assert!(challenge_page(&v).contains("Type <strong>47</strong> on your phone."));
    }

    #[test]
    fn message_and_error_are_escaped() {
        let mut v = view(PageMethod::Sms);
        v.message = Some("<script>alert(1)</script>");
        v.error = Some("<img src=x onerror=alert(2)>");
        let page = challenge_page(&v);
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<img"));
        assert_common(&page);
    }

    #[test]
    fn transaction_id_and_csrf_are_escaped() {
        let mut v = view(PageMethod::Push);
        v.transaction_id = r#"x"><script>alert(1)</script>"#;
        v.csrf = r#""><b>"#;
        let page = challenge_page(&v);
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("<b>"));
        assert!(page.contains(r#"data-transaction-id="x&quot;&gt;&lt;script&gt;"#));
        assert!(page.contains(
            r#"action="/.stepgate/tx/x%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E/complete""#
        ));
        assert!(page.contains(r#"value="&quot;&gt;&lt;b&gt;""#));
    }

    #[test]
    fn sms_page_has_the_code_form() {
        let page = challenge_page(&view(PageMethod::Sms));
        assert_common(&page);
        assert!(page.contains("<title>Confirm it’s you — stepgate</title>"));
        assert!(page.contains(
            r#"<form id="verify-form" method="post" action="/.stepgate/tx/6f1c2a9e-0000-4000-8000-00000000abcd/verify">"#
        ));
        assert!(page.contains(
            r#"<input id="sms_code" name="sms_code" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required autofocus>"#
        ));
        assert!(page.contains(r#"id="verify-button""#));
        assert!(page.contains("Approve transfer of 10 EUR to NL91ABNA0417164300"));
        assert!(page.contains(r#"data-seconds-left="299">4:59</span>"#));
        assert!(!page.contains("resend-form"));
        assert!(!page.contains(r#"id="error""#));
        assert!(
            !page.contains("data-transaction-id"),
            "no status polling for SMS"
        );
        assert!(!page.contains("complete-form"));
    }

    #[test]
    fn sms_page_shows_error_and_resend() {
        let mut v = view(PageMethod::Sms);
        v.error = Some("Wrong code, 2 attempts left");
        v.can_resend = true;
        let page = challenge_page(&v);
        assert!(page.contains(
            r#"<p id="error" class="error" role="alert">Wrong code, 2 attempts left</p>"#
        ));
        assert!(page.contains(r#"aria-invalid="true" aria-describedby="error""#));
        assert!(page.contains(
            r#"<form id="resend-form" method="post" action="/.stepgate/tx/6f1c2a9e-0000-4000-8000-00000000abcd/resend">"#
        ));
    }

    #[test]
    fn resend_is_sms_only() {
        let mut v = view(PageMethod::Push);
        v.can_resend = true;
        assert!(!challenge_page(&v).contains("resend"));
    }

    #[test]
    fn sms_hold_mode_explains_the_request_continues() {
        let mut v = view(PageMethod::Sms);
        v.hold_mode = true;
        let page = challenge_page(&v);
        assert!(page.contains(r#"id="verify-form""#));
        assert!(page.contains("continues by itself once the code is accepted"));
    }

    #[test]
    fn push_page_polls_and_has_the_complete_form() {
        let page = challenge_page(&view(PageMethod::Push));
        assert_common(&page);
        assert!(page.contains("Approve this request on your phone"));
        assert!(page.contains("Approve transfer of 10 EUR"));
        assert!(page.contains(
            r#"<main class="card" data-method="push" data-transaction-id="6f1c2a9e-0000-4000-8000-00000000abcd">"#
        ));
        assert!(page.contains(
            r#"<form id="complete-form" method="post" action="/.stepgate/tx/6f1c2a9e-0000-4000-8000-00000000abcd/complete">"#
        ));
        assert!(page.contains(">Continue</button>"));
        assert!(page.contains(r#"id="status""#));
        assert!(!page.contains("verify-form"));
    }

    #[test]
    fn push_hold_mode_has_no_complete_form() {
        let mut v = view(PageMethod::Push);
        v.hold_mode = true;
        let page = challenge_page(&v);
        assert!(page.contains(r#"data-hold="true""#));
        assert!(page.contains("data-transaction-id"));
        assert!(!page.contains("complete-form"));
    }

    #[test]
    fn otp_page_has_qr_link_and_complete_form() {
        let mut v = view(PageMethod::Otp);
        v.otp_link = Some("stepgate://otp?code=abc&x=<1>");
        let page = challenge_page(&v);
        assert_common(&page);
        assert!(page.contains(r#"<svg class="qr" role="img" aria-label="QR code""#));
        assert!(page.contains(r#"href="stepgate://otp?code=abc&amp;x=&lt;1&gt;""#));
        assert!(page.contains(r#"data-method="otp" data-transaction-id="#));
        assert!(
            page.contains(
                r#"action="/.stepgate/tx/6f1c2a9e-0000-4000-8000-00000000abcd/complete""#
            )
        );
        assert!(!page.contains("<?xml"));
    }

    #[test]
    fn otp_page_refuses_script_links() {
        let mut v = view(PageMethod::Otp);
        v.otp_link = Some(" JavaScript:alert(1)");
        let page = challenge_page(&v);
        assert!(!page.contains("<a "), "{page}");
        assert!(!page.contains("JavaScript:"));
        assert!(is_safe_link("https://example.com/x"));
        assert!(!is_safe_link("java\tscript:alert(1)"));
        assert!(!is_safe_link("data:text/html,x"));
    }

    #[test]
    fn otp_page_without_link_asks_to_approve() {
        let page = challenge_page(&view(PageMethod::Otp));
        assert!(!page.contains("Scan this code"));
        assert!(!page.contains("<svg"));
        assert!(page.contains("Approve this request on your phone"));
        assert!(page.contains("complete-form"));
    }

    #[test]
    fn csrf_token_is_in_every_form() {
        let mut sms = view(PageMethod::Sms);
        sms.can_resend = true;
        let mut otp = view(PageMethod::Otp);
        otp.otp_link = Some("stepgate://otp?code=abc");
        for v in [sms, view(PageMethod::Push), otp] {
            let page = challenge_page(&v);
            let forms = forms(&page);
            assert!(!forms.is_empty());
            for form in forms {
                assert!(
                    form.contains(r#"<input type="hidden" name="csrf" value="csrf-token-123">"#),
                    "{form}"
                );
            }
        }
    }

    #[test]
    fn continue_page_posts_the_complete_form_with_its_csrf_token() {
        let page = continue_page("/.stepgate/tx/abc", "t<o>k");
        assert!(
            page.contains("action=\"/.stepgate/tx/abc/complete\""),
            "{page}"
        );
        assert!(
            page.contains("name=\"csrf\" value=\"t&lt;o&gt;k\""),
            "{page}"
        );
        assert!(!has_event_handler(&page));
    }

    #[test]
    fn message_page_escapes_and_has_the_layout() {
        let page = message_page(
            "Temporarily <unavailable>",
            "Try again in a minute & retry.",
        );
        assert_common(&page);
        assert!(page.contains("<title>Temporarily &lt;unavailable&gt; — stepgate</title>"));
        assert!(page.contains("<h1>Temporarily &lt;unavailable&gt;</h1>"));
        assert!(page.contains("Try again in a minute &amp; retry."));
        assert!(!page.contains("data-transaction-id"));
        assert!(!page.contains("<form"));
    }

    #[test]
    fn qr_svg_renders_inline_svg() {
        let svg = qr_svg("c3RlcGdhdGUtb3RwLXRyYW5zYWN0aW9uLWlkLWFuZC1zZWNyZXQ").unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.ends_with("</svg>"));
        assert!(!svg.contains("style="));
        let width: u32 = svg
            .split(" width=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(width >= 200);
    }

    #[test]
    fn qr_svg_of_too_long_text_is_none() {
        assert!(qr_svg(&"x".repeat(5000)).is_none());
    }

    #[test]
    fn csp_allows_no_inline_code() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-eval"));
        assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
        assert!(CONTENT_SECURITY_POLICY.contains("connect-src 'self'"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    }

    #[test]
    fn script_polls_the_status_endpoint_with_fetch_only() {
        assert!(SCRIPT.contains("/status?wait=25"));
        assert!(SCRIPT.contains(r#""Accept": "application/json""#));
        assert!(SCRIPT.contains(r#"credentials: "same-origin""#));
        assert!(SCRIPT.contains("data-transaction-id"));
        assert!(SCRIPT.contains("complete-form"));
        assert!(SCRIPT.contains("sleep(2000)"));
        assert!(!SCRIPT.contains("XMLHttpRequest"));
        assert!(!SCRIPT.contains("eval("));
        assert!(
            SCRIPT.is_ascii(),
            "served bytes must not depend on a charset"
        );
        assert!(STYLE.is_ascii());
    }

    #[test]
    fn countdown_formats_minutes_and_seconds() {
        assert_eq!(format_seconds(0), "0:00");
        assert_eq!(format_seconds(65), "1:05");
        assert_eq!(format_seconds(3600), "60:00");
    }
}
