//! The secure-message context end to end: with `features.geolocation` on and the MaxMind test
//! database (`tests/data/GeoIP2-City-Test.mmdb`), a v4 push init with `ip_address` and
//! `user_agent` puts the device and location into the secure message the phone shows
//! (`stepgate device show`); a private address leaves only the location out and logs
//! `GEOLOCATION_LOOKUP_FAILED`; v3 ignores both fields; a bad database fails `validate` with 64.

use std::path::PathBuf;
use std::process::Command;

use crate::device_cli::DeviceCli;
use crate::harness::BINARY;
use crate::push_flow::{ANN_TOKEN, Store, World, world};

const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const FIREFOX_WINDOWS: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0";

fn city_database() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/GeoIP2-City-Test.mmdb")
}

fn geolocation_yaml(templates: &str) -> String {
    format!(
        "features: {{ geolocation: true }}\ngeolocation:\n  database: \"{}\"\n{templates}",
        city_database().display()
    )
}

/// Starts a v4 push (`login_pin`) with `extra` form fields and returns the transaction id.
async fn init_v4(w: &World, device_id: &str, extra: &[(&str, &str)]) -> String {
    let callback = w.callback_url();
    let mut form = vec![
        ("type", "login_pin"),
        ("user_id", "ann"),
        ("device_id", device_id),
        ("callback_uri", callback.as_str()),
    ];
    form.extend_from_slice(extra);
    let (status, init) = w.post("/oauth/api/v4/authenticate/user", &form).await;
    assert_eq!(status, 200, "init: {init}\n{}", w.gate.log_text());
    init["transaction_id"].as_str().unwrap().to_owned()
}

/// The secure message the phone shows for `tx`.
fn shown(phone: &DeviceCli, tx: &str) -> String {
    let (exit, shown, err) = phone.run(&["show", tx]);
    assert_eq!(exit, 0, "{err}");
    shown["secure_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn device_and_location_reach_the_phone(store: Store) {
    let w = world(store, "single", &geolocation_yaml(""));
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;

    let tx = init_v4(
        &w,
        &device_id,
        &[
            ("secure_message", "Pay 10 EUR"),
            ("ip_address", "81.2.69.142"),
            ("user_agent", CHROME_MAC),
        ],
    )
    .await;
    assert_eq!(
        shown(&phone, &tx),
        "Pay 10 EUR Device: Mac OSX Chrome, Location: GB, England, London"
    );
    // The context is secure-message only: the push itself carries none of it.
    let push = w.apns.received().pop().expect("a push");
    let raw = push.payload.to_string();
    assert!(!raw.contains("London") && !raw.contains("Chrome"), "{raw}");

    // Non-ASCII names survive the store; without `secure_message` the message is the base.
    let tx = init_v4(
        &w,
        &device_id,
        &[
            ("message", "Sign in to the bank"),
            ("ip_address", "89.160.20.112"),
            ("user_agent", FIREFOX_WINDOWS),
        ],
    )
    .await;
    assert_eq!(
        shown(&phone, &tx),
        "Sign in to the bank Device: Windows 10 Firefox, Location: SE, Östergötland County, Linköping"
    );

    // A private address: the device part stays, the location is left out and an event logged.
    let tx = init_v4(
        &w,
        &device_id,
        &[
            ("secure_message", "Pay 10 EUR"),
            ("ip_address", "10.20.30.40"),
            ("user_agent", CHROME_MAC),
        ],
    )
    .await;
    assert_eq!(shown(&phone, &tx), "Pay 10 EUR Device: Mac OSX Chrome");
    let log = w.gate.log_text();
    let event = log
        .lines()
        .find(|line| line.contains("GEOLOCATION_LOOKUP_FAILED"))
        .unwrap_or_else(|| panic!("no GEOLOCATION_LOOKUP_FAILED event in:\n{log}"));
    assert!(event.contains(&tx), "{event}");
    assert!(event.contains("non_public_address"), "{event}");
    assert!(
        !event.contains("10.20.30.40"),
        "no address in the audit event: {event}"
    );

    // Only an address, in an IPv4-mapped IPv6 spelling.
    let tx = init_v4(
        &w,
        &device_id,
        &[
            ("secure_message", "Pay 10 EUR"),
            ("ip_address", "::ffff:2.125.160.216"),
        ],
    )
    .await;
    assert_eq!(
        shown(&phone, &tx),
        "Pay 10 EUR, Location: GB, England, Boxford"
    );

    // An address that is not one is a parameter error.
    let (status, body) = w
        .post(
            "/oauth/api/v4/authenticate/user",
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("device_id", &device_id),
                ("callback_uri", &w.callback_url()),
                ("ip_address", "81.2.69"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("1003")),
        "{body}"
    );

    // v3 has no ip_address or user_agent: they are ignored, even malformed.
    let (status, init) = w
        .post(
            "/oauth/api/v3/authenticate/user",
            &[
                ("type", "login_pin"),
                ("user_id", "ann"),
                ("app_id", "bank-app"),
                ("callback_uri", &w.callback_url()),
                ("secure_message", "Pay 10 EUR"),
                ("ip_address", "not-an-address"),
                ("user_agent", CHROME_MAC),
            ],
        )
        .await;
    assert_eq!(status, 200, "v3 init: {init}");
    let tx = init["transaction_id"].as_str().unwrap();
    assert_eq!(shown(&phone, tx), "Pay 10 EUR");
}

#[tokio::test]
async fn device_and_location_reach_the_phone_on_memory() {
    device_and_location_reach_the_phone(Store::Memory).await;
}

#[tokio::test]
async fn device_and_location_reach_the_phone_on_redis() {
    device_and_location_reach_the_phone(Store::Redis).await;
}

#[tokio::test]
async fn the_language_picks_the_template() {
    let templates = "  templates:
    en: \"[message] ([browser] from [city], [countryCode])\"
    nl: \"[message] ([browser] vanuit [city], [countryCode])\"
";
    let w = world(Store::Memory, "single", &geolocation_yaml(templates));
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let context = [
        ("secure_message", "Betaal 10 EUR"),
        ("ip_address", "81.2.69.142"),
        ("user_agent", CHROME_MAC),
    ];
    let mut dutch = context.to_vec();
    dutch.push(("language_code", "nl"));
    let tx = init_v4(&w, &device_id, &dutch).await;
    assert_eq!(
        shown(&phone, &tx),
        "Betaal 10 EUR (Chrome vanuit London, GB)"
    );
    let mut french = context.to_vec();
    french.push(("language_code", "fr"));
    let tx = init_v4(&w, &device_id, &french).await;
    assert_eq!(shown(&phone, &tx), "Betaal 10 EUR (Chrome from London, GB)");
}

#[tokio::test]
async fn without_the_feature_the_secure_message_is_left_alone() {
    let w = world(Store::Memory, "single", "");
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let tx = init_v4(
        &w,
        &device_id,
        &[
            ("secure_message", "Pay 10 EUR"),
            ("ip_address", "81.2.69.142"),
            ("user_agent", CHROME_MAC),
        ],
    )
    .await;
    assert_eq!(shown(&phone, &tx), "Pay 10 EUR");
}

#[test]
fn validate_refuses_a_database_that_is_not_one_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fake.mmdb"), b"this is no MaxMind database").unwrap();
    let config = dir.path().join("geo.yaml");
    std::fs::write(
        &config,
        "secret_key: \"0123456789abcdef0123456789abcdef\"
features: { geolocation: true }
geolocation:
  database: fake.mmdb
  templates:
    en: \"[message] from [town]\"
",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = config.display().to_string();
    for expected in [
        format!("{name}:4:3: geolocation.database: cannot open fake.mmdb as a MaxMind database"),
        format!("{name}:6:5: geolocation.templates.en: unknown placeholder '[town]'"),
        format!("{name}: 2 problems"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    // The test database itself passes, relative to the config file.
    std::fs::copy(city_database(), dir.path().join("city.mmdb")).unwrap();
    std::fs::write(
        &config,
        "secret_key: \"0123456789abcdef0123456789abcdef\"
features: { geolocation: true }
geolocation: { database: city.mmdb }
",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
