//! Config loading tests: the sample file, every documented mistake, and the report format.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::settings::StoreBackend;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn no_env() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::new()
}

fn issues_of(text: &str) -> Vec<Issue> {
    match load_str(text, Path::new("bad.yaml"), &no_env()) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(error) => error.issues().to_vec(),
    }
}

fn minimal(extra: &str) -> String {
    format!("secret_key: \"{SECRET}\"\n{extra}")
}

#[test]
fn the_sample_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let settings = load(&path, &no_env()).unwrap();
    assert_eq!(settings.store.backend, StoreBackend::Memory);
    assert_eq!(settings.auth_types.len(), 3);
    assert_eq!(settings.listen.api.port(), 8081);
}

#[test]
fn an_empty_file_with_a_secret_from_the_environment_uses_defaults() {
    let env = BTreeMap::from([("STEPGATE_SECRET_KEY", SECRET)]);
    let settings = load_str("{}\n", Path::new("c.yaml"), &env).unwrap();
    assert_eq!(settings.listen.proxy.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.public_url.as_str(), "http://127.0.0.1:8081/");
    assert!(settings.auth_types.is_empty());
}

#[test]
fn three_mistakes_are_all_reported_with_lines_in_file_order() {
    let text = minimal(
        "listen:\n  api: \"localhost\"\nauth_types:\n  - name: sms\n    method: sms\n    ttl_secondz: 5\n  - name: push\n    method: push\n    fallback: sms_cod\ncallbacks: { only_allow_configured: false }\n",
    );
    let rendered: Vec<String> = issues_of(&text).iter().map(Issue::to_string).collect();
    assert_eq!(rendered.len(), 3, "{rendered:#?}");
    assert!(
        rendered[0]
            .starts_with("bad.yaml:3:3: listen.api: 'localhost' is not a listen address (expected"),
        "{}",
        rendered[0]
    );
    assert!(
        rendered[1].starts_with("bad.yaml:7:5: auth_types[0].ttl_secondz: unknown key"),
        "{}",
        rendered[1]
    );
    assert!(rendered[2].starts_with("bad.yaml:10:5: auth_types[1].fallback: auth type 'push' falls back to unknown type 'sms_cod' (expected one of: sms, push)"), "{}", rendered[2]);
}

#[test]
fn every_unknown_key_is_reported() {
    let issues = issues_of(&minimal(
        "lisen: {}\nstore:\n  backend: memory\n  redis: { urll: x }\n",
    ));
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["lisen", "store.redis.urll"]);
    assert_eq!(
        issues[1].position,
        Position {
            line: 5,
            column: 12
        }
    );
}

#[test]
fn fallback_mistakes() {
    let text = minimal(
        "auth_types:
  - { name: a, method: push, fallback: b }
  - { name: b, method: push, fallback: a }
  - { name: qr, method: otp, fallback: a }
  - { name: a, method: sms }
",
    );
    let rendered: Vec<String> = issues_of(&text).iter().map(Issue::to_string).collect();
    let joined = rendered.join("\n");
    assert!(
        joined.contains("auth_types[0].fallback: fallback cycle: a -> b -> a"),
        "{joined}"
    );
    assert!(
        joined.contains(
            "auth_types[2].fallback: auth type 'qr' uses method otp, which cannot have a fallback"
        ),
        "{joined}"
    );
    assert!(
        joined.contains("auth_types[3].name: duplicate auth type name 'a'"),
        "{joined}"
    );
}

#[test]
fn sms_template_without_code_is_an_error_unless_intended() {
    let body = "auth_types:\n  - name: s\n    method: sms\n    default_messages: { en: \"Your code follows\" }\n";
    let issues = issues_of(&minimal(body));
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].path, "auth_types[0].default_messages.en");
    assert!(issues[0].message.contains("no {code} placeholder"));
    let intended = format!("{body}    allow_message_without_code: true\n");
    assert!(load_str(&minimal(&intended), Path::new("ok.yaml"), &no_env()).is_ok());
}

#[test]
fn bad_redis_url_and_backend() {
    let issues = issues_of(&minimal(
        "store:\n  backend: redis\n  redis:\n    url: \"http://:pw@nowhere\"\n",
    ));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "store.redis.url");
    assert!(
        !issues[0].message.contains(":pw@"),
        "the password must not be echoed: {}",
        issues[0].message
    );
    let issues = issues_of(&minimal("store: { backend: postgres }\n"));
    assert!(issues[0].message.contains("expected memory or redis"));
}

#[test]
fn values_from_the_environment_are_reported_against_their_variable() {
    let env = BTreeMap::from([
        ("STEPGATE_SECRET_KEY", SECRET),
        ("STEPGATE_REDIS_URL", "nope://"),
    ]);
    let error = load_str("store: { backend: redis }\n", Path::new("c.yaml"), &env).unwrap_err();
    let rendered = error.to_string();
    assert!(
        rendered.starts_with("c.yaml: store.redis.url (from STEPGATE_REDIS_URL): "),
        "{rendered}"
    );
}

#[test]
fn secrets_are_required_and_long_enough() {
    let issues = issues_of("log: { level: info }\n");
    assert_eq!(issues[0].path, "secret_key");
    assert!(issues[0].message.contains("STEPGATE_SECRET_KEY"));
    let issues = issues_of("secret_key: short\n");
    assert!(issues[0].message.contains("too short"));
    let issues = issues_of(&minimal(
        "api_clients:\n  - { client_id: p, apis: [mobile_authentication] }\n",
    ));
    assert_eq!(issues[0].path, "api_clients[0].client_secret");
    assert!(issues[0].message.contains("STEPGATE_API_CLIENT_SECRET_P"));
}

#[test]
fn shape_errors_stop_the_parse_but_are_located() {
    let issues = issues_of(&minimal(
        "auth_types:\n  - name: s\n    method: sms\n    ttl_seconds: soon\n",
    ));
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].path, "auth_types[0].ttl_seconds");
    assert_eq!(issues[0].position.line, 5);
}

#[test]
fn api_clients_and_callbacks_are_checked() {
    let text = minimal(
        "api_clients:
  - { client_id: p, client_secret: \"0123456789abcdef\", apis: [mobile_auth], allowed_networks: [\"10.0.0.0/33\"] }
callbacks:
  only_allow_configured: true
  endpoints: [ { url: \"ftp://x\" }, { url: \"https://a.example/cb\", username: u } ]
",
    );
    let paths: Vec<String> = issues_of(&text).into_iter().map(|i| i.path).collect();
    assert_eq!(
        paths,
        [
            "api_clients[0].apis[0]",
            "api_clients[0].allowed_networks[0]",
            "callbacks.endpoints[0].url",
            "callbacks.endpoints[1]",
        ]
    );
}

#[test]
fn listeners_must_not_share_an_address() {
    let issues = issues_of(&minimal(
        "listen: { proxy: \"127.0.0.1:9000\", api: \"127.0.0.1:9000\" }\n",
    ));
    assert_eq!(issues[0].path, "listen.api");
    assert!(issues[0].message.contains("already used by listen.proxy"));
}

#[test]
fn shape_error_messages_read_cleanly() {
    let issues = issues_of(&minimal(
        "auth_types:\n  - name: s\n    ttl_seconds: soon\n",
    ));
    let rendered = issues[0].to_string();
    assert_eq!(
        rendered,
        "bad.yaml:4:18: auth_types[0].ttl_seconds: not a whole number (expected digits only, such as 300)"
    );
    assert!(!rendered.contains('\n'), "one line per issue: {rendered}");
}

#[test]
fn tls_to_redis_is_allowed_but_never_unverified() {
    let ok =
        minimal("store: { backend: redis, redis: { url: \"rediss://cache.internal:6380/0\" } }\n");
    assert!(load_str(&ok, Path::new("ok.yaml"), &no_env()).is_ok());
    let issues = issues_of(&minimal(
        "store: { redis: { url: \"rediss://cache:6380/0#insecure\" } }\n",
    ));
    assert_eq!(issues[0].path, "store.redis.url");
    assert!(issues[0].message.contains("SSL_CERT_FILE"));
}

// --- sms ----------------------------------------------------------------------------------------

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

fn settings_of(text: &str, env: &BTreeMap<&str, &str>) -> Settings {
    match load_str(text, Path::new("ok.yaml"), env) {
        Ok(settings) => settings,
        Err(error) => panic!("expected valid config, got:\n{error}\nin:\n{text}"),
    }
}

#[test]
fn sms_defaults_to_the_offline_file_gateway() {
    use crate::config::settings::SmsGateway;
    let settings = settings_of(&minimal(""), &no_env());
    match &settings.sms.gateway {
        SmsGateway::File(file) => assert_eq!(file.path, Path::new("sms-outbox.jsonl")),
        other => panic!("expected the file gateway, got {other:?}"),
    }
    assert_eq!(settings.sms.timeout, std::time::Duration::from_millis(5000));
    assert_eq!(settings.sms.origin_bound_host, None);
}

#[test]
fn twilio_takes_its_token_from_the_environment() {
    use crate::config::settings::SmsGateway;
    let text = minimal(&format!(
        "sms:\n  gateway: twilio\n  origin_bound_host: Bank.Example\n  twilio:\n    account_sid: {TWILIO_SID}\n    from_number: \"+15005550006\"\n"
    ));
    let env = BTreeMap::from([("STEPGATE_TWILIO_AUTH_TOKEN", "token-from-env")]);
    let settings = settings_of(&text, &env);
    let SmsGateway::Twilio(twilio) = &settings.sms.gateway else {
        panic!("expected twilio: {:?}", settings.sms.gateway);
    };
    assert_eq!(twilio.auth_token, "token-from-env");
    assert_eq!(twilio.base_url.as_str(), "https://api.twilio.com/");
    assert_eq!(
        settings.sms.origin_bound_host.as_deref(),
        Some("bank.example")
    );
    let shown = format!("{settings:?}");
    assert!(!shown.contains("token-from-env"), "{shown}");
}

#[test]
fn an_incomplete_twilio_section_reports_every_field() {
    let issues = issues_of(&minimal(
        "sms:\n  gateway: twilio\n  twilio:\n    account_sid: AB123\n    from_number: MyBank\n    base_url: \"ftp://api.twilio.com\"\n",
    ));
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            // Missing keys are reported at their section's line.
            "sms.twilio.auth_token",
            "sms.twilio.account_sid",
            "sms.twilio.from_number",
            "sms.twilio.base_url",
        ],
        "{issues:#?}"
    );
    assert_eq!(issues[0].position.line, 4);
    assert!(issues[0].message.contains("STEPGATE_TWILIO_AUTH_TOKEN"));
    assert!(issues[1].message.contains("AC followed by 32 hexadecimal"));
    assert!(issues[2].message.contains("+E.164"));
}

#[test]
fn a_bad_secret_from_the_environment_is_reported_against_its_variable() {
    let text = minimal(&format!(
        "sms:\n  gateway: twilio\n  twilio: {{ account_sid: {TWILIO_SID}, from_number: \"+15005550006\" }}\n"
    ));
    let env = BTreeMap::from([("STEPGATE_TWILIO_AUTH_TOKEN", "has a space")]);
    let error = load_str(&text, Path::new("c.yaml"), &env).unwrap_err();
    let rendered = error.to_string();
    assert!(
        rendered.starts_with("c.yaml: sms.twilio.auth_token (from STEPGATE_TWILIO_AUTH_TOKEN): "),
        "{rendered}"
    );
    assert!(!rendered.contains("has a space"), "{rendered}");
}

#[test]
fn the_console_gateway_validates_and_needs_no_section() {
    use crate::config::settings::SmsGateway;
    let settings = settings_of(&minimal("sms: { gateway: console }\n"), &no_env());
    assert_eq!(settings.sms.gateway, SmsGateway::Console);
    assert_eq!(settings.sms.gateway.name(), "console");
}

#[test]
fn only_the_selected_gateway_must_be_complete() {
    let text = minimal(
        "sms:\n  gateway: file\n  twilio: { account_sid: nope, base_url: nope }\n  http: { format: xml }\n",
    );
    settings_of(&text, &no_env());
    let issues = issues_of(&minimal("sms:\n  gateway: file\n  file: { path: \" \" }\n"));
    assert_eq!(issues[0].path, "sms.file.path");
}

#[test]
fn sms_gateway_timeout_and_origin_host_are_checked() {
    let issues = issues_of(&minimal(
        "sms:\n  gateway: pigeon\n  timeout_ms: 50\n  origin_bound_host: \"https://bank.example:443/login\"\n",
    ));
    let rendered: Vec<String> = issues.iter().map(Issue::to_string).collect();
    assert_eq!(rendered.len(), 3, "{rendered:#?}");
    assert!(
        rendered[0].contains(
            "sms.gateway: unknown gateway 'pigeon' (expected twilio, http, file or console)"
        ),
        "{}",
        rendered[0]
    );
    assert!(
        rendered[1].contains("sms.timeout_ms: 50 is out of range (expected 100 to 60000)"),
        "{}",
        rendered[1]
    );
    assert!(
        rendered[2].contains("sms.origin_bound_host:"),
        "{}",
        rendered[2]
    );
    for host in [
        "bank.example:443",
        "bank.example/path",
        "-bank.example",
        "bank..example",
    ] {
        let issues = issues_of(&minimal(&format!(
            "sms: {{ origin_bound_host: \"{host}\" }}\n"
        )));
        assert_eq!(issues[0].path, "sms.origin_bound_host", "{host}");
    }
}

#[test]
fn the_http_gateway_compiles_its_templates_and_auth() {
    use crate::config::settings::{HttpAuth, HttpBodyFormat, SmsGateway, TemplatePart};
    let text = minimal(
        "sms:
  gateway: http
  http:
    url: \"https://sms.example/send\"
    format: form
    headers: { X-Api-Key: \"key-value-secret\" }
    body: { recipient: \"{to}\", sender: \"{from}\", message: \"Code: {body}\" }
",
    );
    let env = BTreeMap::from([("STEPGATE_SMS_HTTP_BEARER_TOKEN", "bearer-secret")]);
    let settings = settings_of(&text, &env);
    let SmsGateway::Http(http) = &settings.sms.gateway else {
        panic!("expected http: {:?}", settings.sms.gateway);
    };
    assert_eq!(http.format, HttpBodyFormat::Form);
    assert_eq!(http.auth, Some(HttpAuth::Bearer("bearer-secret".into())));
    let names: Vec<&str> = http.body.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["message", "recipient", "sender"]);
    assert_eq!(
        http.body[0].1.parts(),
        [TemplatePart::Text("Code: ".into()), TemplatePart::Body]
    );
    assert!(http.body[2].1.is_only_from());
    let shown = format!("{settings:?}");
    for secret in ["bearer-secret", "key-value-secret"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[test]
fn http_gateway_mistakes_are_all_reported() {
    let text = minimal(
        "sms:
  gateway: http
  http:
    format: xml
    username: u
    headers: { \"Bad Header\": v }
    body: { to: \"{to}\", text: \"{code}\" }
",
    );
    let issues = issues_of(&text);
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "sms.http.url",
        "sms.http.format",
        "sms.http",
        "sms.http.headers.Bad Header",
        "sms.http.body.text",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing in {issues:#?}"
        );
    }
    let placeholder = issues
        .iter()
        .find(|i| i.path == "sms.http.body.text")
        .unwrap();
    assert!(
        placeholder.message.contains("unknown placeholder '{code}'"),
        "{}",
        placeholder.message
    );
    assert!(
        !paths.contains(&"sms.http.body"),
        "a broken field is reported once: {issues:#?}"
    );

    let issues = issues_of(&minimal(
        "sms: { gateway: http, http: { url: \"https://sms.example/send\", body: { to: \"{to}\" } } }\n",
    ));
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].path, "sms.http.body");
    assert!(
        issues[0].message.contains("no field uses {body}"),
        "{}",
        issues[0].message
    );
}

#[test]
fn http_basic_and_bearer_do_not_mix() {
    let env = BTreeMap::from([
        ("STEPGATE_SMS_HTTP_PASSWORD", "pw-secret"),
        ("STEPGATE_SMS_HTTP_BEARER_TOKEN", "bearer-secret"),
    ]);
    let text = minimal(
        "sms: { gateway: http, http: { url: \"https://sms.example/send\", username: u } }\n",
    );
    let error = load_str(&text, Path::new("c.yaml"), &env).unwrap_err();
    let rendered = error.to_string();
    assert!(
        rendered.contains(
            "sms.http.bearer_token (from STEPGATE_SMS_HTTP_BEARER_TOKEN): cannot be combined"
        ),
        "{rendered}"
    );
    assert!(!rendered.contains("secret"), "{rendered}");
    let env = BTreeMap::from([("STEPGATE_SMS_HTTP_PASSWORD", "pw-secret")]);
    let settings = settings_of(&text, &env);
    assert!(format!("{settings:?}").contains("Basic"));
    assert!(!format!("{settings:?}").contains("pw-secret"));
}

#[test]
fn inline_policies_compile_in_order_with_the_default() {
    let text = minimal(
        "auth_types: [ { name: sms, method: sms, default_messages: { en: \"{code}\" } } ]
proxy: { default_action: deny, trusted_proxies: [\"10.0.0.0/8\"], identity: { header: X-User-Id } }
policies:
  - { name: open, match: { paths: [\"/public/**\"] }, action: allow }
  - name: pay
    match: { methods: [post], paths: [\"/pay\"] }
    require: { auth_type: sms, freshness_seconds: 0 }
    mode: hold
",
    );
    let settings = load_str(&text, Path::new("c.yaml"), &no_env()).unwrap();
    let names: Vec<&str> = settings
        .policies
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["open", "pay"]);
    assert_eq!(
        settings.policies.default,
        crate::domain::policy::Decision::Deny
    );
    assert_eq!(settings.policies.policies[1].matcher.methods, ["POST"]);
}

#[test]
fn policy_mistakes_are_each_reported_with_their_path() {
    let text = minimal(
        "auth_types: [ { name: sms, method: sms, default_messages: { en: \"{code}\" } } ]
policies:
  - { name: a, match: { paths: [\"transfer\"], networks: [\"10.0.0.0/33\"] }, require: { auth_type: sms_cod } }
  - { name: a, action: allow, require: { auth_type: sms } }
  - { name: c, match: { hosts: [\"bank.example:443\"] }, action: maybe, mode: later }
  - { name: d, message: \"Pay {amount}\", require: { auth_type: sms } }
  - { name: e }
",
    );
    let rendered: Vec<String> = issues_of(&text).iter().map(Issue::to_string).collect();
    let joined = rendered.join("\n");
    for expected in [
        "policies[0].match.paths[0]: 'transfer' is not a path pattern",
        "policies[0].match.networks[0]: '10.0.0.0/33' is not a network",
        "policies[0].require.auth_type: unknown auth type 'sms_cod' (expected one of: sms)",
        "policies[1].name: duplicate policy name 'a'",
        "policies[1].action: 'action: allow' and 'require' exclude each other",
        "policies[2].match.hosts[0]: 'bank.example:443' is not a host",
        "policies[2].action: unknown action 'maybe'",
        "policies[2].mode: unknown mode 'later'",
        "policies[3].message: placeholder '{amount}' is not one of",
        "policies[4].require: missing",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
    assert_eq!(rendered.len(), 10, "{joined}");
}

#[test]
fn policy_files_are_read_in_order_and_located_in_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/10-first.yaml"),
        "policies:\n  - { name: one, match: { paths: [\"/a\"] }, action: deny }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/20-second.yaml"),
        "policies:\n  - { name: two, action: allow }\n",
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    let text = minimal(
        "policies: [ { name: inline, match: { paths: [\"/i\"] }, action: deny } ]\nproxy: { policy_files: [\"policies/*.yaml\"] }\n",
    );
    std::fs::write(&config, &text).unwrap();
    let settings = load(&config, &no_env()).unwrap();
    let names: Vec<&str> = settings
        .policies
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["inline", "one", "two"]);

    std::fs::write(
        dir.path().join("policies/20-second.yaml"),
        "policies:\n  - { name: one, action: allow }\n  - name: three\n    require: { auth_type: nope }\n    matchh: {}\n",
    )
    .unwrap();
    let issues = load(&config, &no_env()).unwrap_err().issues().to_vec();
    let rendered: Vec<String> = issues.iter().map(Issue::to_string).collect();
    let second = dir
        .path()
        .join("policies/20-second.yaml")
        .display()
        .to_string();
    assert_eq!(rendered.len(), 3, "{rendered:#?}");
    assert!(
        rendered[0].starts_with(&format!(
            "{second}:2:7: policies[0].name: duplicate policy name 'one'"
        )),
        "{rendered:#?}"
    );
    assert!(rendered.iter().any(|r| r.starts_with(&format!("{second}:4:16: policies[1].require.auth_type: unknown auth type 'nope' (expected an auth_types entry; none is configured)"))), "{rendered:#?}");
    assert!(
        rendered
            .iter()
            .any(|r| r.starts_with(&format!("{second}:5:5: policies[1].matchh: unknown key"))),
        "{rendered:#?}"
    );
}

#[test]
fn a_named_policy_file_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        minimal("proxy:\n  policy_files: [\"rules.yaml\", \"none/*.yaml\"]\n"),
    )
    .unwrap();
    let issues = load(&config, &no_env()).unwrap_err().issues().to_vec();
    assert_eq!(
        issues.len(),
        1,
        "a pattern matching nothing is fine; a missing named file is not"
    );
    assert_eq!(issues[0].path, "proxy.policy_files[0]");
    assert_eq!(issues[0].position.line, 3);
    assert!(is_policy_file("policies: []\n"));
    assert!(!is_policy_file("policies: []\nlisten: {}\n"));
}

#[test]
fn the_admin_listener_defaults_to_loopback_and_must_stand_apart_only_when_used() {
    let settings = load_str(&minimal(""), Path::new("c.yaml"), &no_env()).unwrap();
    assert_eq!(settings.listen.admin.to_string(), "127.0.0.1:8082");
    // Without an admin client it is never bound, so sharing an address is no conflict.
    let shared = "listen: { api: \"127.0.0.1:9000\", admin: \"127.0.0.1:9000\" }\n";
    assert!(load_str(&minimal(shared), Path::new("c.yaml"), &no_env()).is_ok());
    let with_admin = format!(
        "{shared}api_clients:\n  - {{ client_id: ops, client_secret: \"ops-secret-0123456789\", apis: [admin] }}\n"
    );
    let issues = issues_of(&minimal(&with_admin));
    assert_eq!(issues[0].path, "listen.admin");
    assert!(issues[0].message.contains("already used by listen.api"));
    let issues = issues_of(&minimal("listen: { admin: \"localhost:8082\" }\n"));
    assert_eq!(issues[0].path, "listen.admin");
}

#[test]
fn callbacks_reach_only_configured_endpoints_by_default() {
    let sms_only = minimal(
        "auth_types:\n  - { name: sms, method: sms, default_messages: { en: \"Code: {code}\" } }\n",
    );
    let settings = load_str(&sms_only, Path::new("c.yaml"), &no_env()).unwrap();
    assert!(settings.callbacks.only_allow_configured);
    assert!(settings.callbacks.allowed_networks.is_empty());

    // A push type needs somewhere to call back: endpoints, or the switch turned off.
    let push = minimal(
        "auth_types:\n  - { name: login, method: push, default_messages: { en: \"Approve\" } }\n",
    );
    let rendered: Vec<String> = issues_of(&push).iter().map(Issue::to_string).collect();
    assert_eq!(rendered.len(), 1, "{rendered:#?}");
    assert!(
        rendered[0].contains("callbacks.only_allow_configured: is on (the default)"),
        "{rendered:#?}"
    );

    let open = format!(
        "{push}callbacks:\n  only_allow_configured: false\n  allowed_networks: [\"10.20.0.0/16\", \"fd00::1\", \"not-a-net\"]\n"
    );
    let rendered: Vec<String> = issues_of(&open).iter().map(Issue::to_string).collect();
    assert_eq!(rendered.len(), 1, "{rendered:#?}");
    assert!(
        rendered[0].contains("callbacks.allowed_networks[2]: 'not-a-net' is not a network"),
        "{rendered:#?}"
    );
}

#[test]
fn redis_sentinel_and_cluster_modes_compile_with_secrets_from_the_environment() {
    use crate::config::settings::RedisMode;
    let env = BTreeMap::from([
        ("STEPGATE_REDIS_PASSWORD", "data-secret"),
        ("STEPGATE_REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
    ]);
    let settings = settings_of(
        &minimal(
            "store:\n  backend: redis\n  redis:\n    mode: sentinel\n    tls: true\n    db: 2\n    sentinel: { master_name: main, nodes: [\"10.0.0.1:26379\", \"[::1]:26380\", \"sentinel-3.internal:26379\"] }\n",
        ),
        &env,
    );
    let StoreBackend::Redis(redis) = settings.store.backend else {
        panic!("redis expected")
    };
    let RedisMode::Sentinel(sentinel) = &redis.mode else {
        panic!("sentinel expected: {:?}", redis.mode)
    };
    assert_eq!(sentinel.master_name, "main");
    assert_eq!(sentinel.sentinels.len(), 3);
    assert_eq!(sentinel.sentinels[1].host, "::1");
    assert_eq!(sentinel.sentinels[1].to_string(), "[::1]:26380");
    assert_eq!(sentinel.db, 2);
    assert!(sentinel.data_auth.tls);
    assert_eq!(sentinel.data_auth.password.as_deref(), Some("data-secret"));
    assert_eq!(
        sentinel.sentinel_auth.password.as_deref(),
        Some("sentinel-secret")
    );
    assert!(!format!("{redis:?}").contains("secret"));

    let settings = settings_of(
        &minimal(
            "store: { backend: redis, redis: { mode: cluster, cluster: { nodes: [\"10.0.0.1:7000\", \"10.0.0.2:7000\"] } } }\n",
        ),
        &no_env(),
    );
    let StoreBackend::Redis(redis) = settings.store.backend else {
        panic!("redis expected")
    };
    assert!(matches!(&redis.mode, RedisMode::Cluster(cluster) if cluster.nodes.len() == 2));
}

#[test]
fn redis_mode_mistakes_are_located() {
    let messages = |yaml: &str| -> Vec<String> {
        issues_of(&minimal(yaml))
            .into_iter()
            .map(|issue| format!("{}: {}", issue.path, issue.message))
            .collect()
    };
    let found = messages(
        "store: { backend: redis, redis: { mode: sentinel, cluster: { nodes: [\"a:1\"] }, sentinel: { nodes: [\"nohost\", \"h:0\"] } } }\n",
    );
    let has = |needle: &str| found.iter().any(|message| message.starts_with(needle));
    assert!(
        has("store.redis.cluster: set, but mode is sentinel"),
        "{found:#?}"
    );
    assert!(
        has("store.redis.sentinel.master_name: missing"),
        "{found:#?}"
    );
    assert!(
        has("store.redis.sentinel.nodes[0]: 'nohost' is not host:port"),
        "{found:#?}"
    );
    assert!(
        has("store.redis.sentinel.nodes[1]: 'h:0' is not host:port"),
        "{found:#?}"
    );

    let found = messages("store: { backend: redis, redis: { mode: cluster } }\n");
    assert!(
        found
            .iter()
            .any(|message| message.starts_with("store.redis.cluster.nodes: missing")),
        "{found:#?}"
    );
    let found = messages("store: { backend: redis, redis: { mode: ring, password: x } }\n");
    assert!(
        found
            .iter()
            .any(|message| message.starts_with("store.redis.mode: unknown mode 'ring'")),
        "{found:#?}"
    );
    let found = messages("store: { backend: redis, redis: { password: x, db: 3 } }\n");
    assert!(
        found.iter().any(|message| message
            .starts_with("store.redis.password: only for mode: sentinel or cluster")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|message| message.starts_with("store.redis.db: only for mode: sentinel")),
        "{found:#?}"
    );
}
