//! The command line as operators use it: validate, version, and refusing to run a bad config.

use std::fs;
use std::process::Command;

use crate::harness::{BINARY, GateBuilder, free_addr};

fn sample_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")
}

#[test]
fn validate_accepts_the_sample_config() {
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(sample_config())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("config.yaml: ok"));
}

#[test]
fn validate_prints_every_mistake_with_its_line_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "secret_key: \"0123456789abcdef0123456789abcdef\"
listen:
  api: \"not-an-address\"
store:
  backend: redis
  redis: { url: \"redis://[broken\" }
auth_types:
  - name: push
    method: push
    fallback: sms_cod
callbacks: { only_allow_configured: false }
",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&bad)
        .arg(sample_config())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let bad_name = bad.display().to_string();
    for expected in [
        format!("{bad_name}:3:3: listen.api: 'not-an-address' is not a listen address"),
        format!("{bad_name}:6:12: store.redis.url: "),
        format!(
            "{bad_name}:10:5: auth_types[0].fallback: auth type 'push' falls back to unknown type 'sms_cod'"
        ),
        format!("{bad_name}: 3 problems"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("config.yaml: ok"),
        "the good file is still checked"
    );
}

#[test]
fn run_refuses_an_invalid_or_missing_config_with_64() {
    let output = Command::new(BINARY)
        .args(["run", "--config", "/nonexistent/stepgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("/nonexistent/stepgate.yaml: cannot read")
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    fs::write(&config, "secret_key: short\n").unwrap();
    let output = Command::new(BINARY)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("STEPGATE_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("secret_key: too short"));
}

#[test]
fn secret_key_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    fs::write(&config, "log: { level: warn }\n").unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&config)
        .env(
            "STEPGATE_SECRET_KEY",
            "from-the-environment-0123456789abcdef",
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_taken_port_fails_the_boot_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    let text = GateBuilder::memory().config_text(addr, free_addr(), free_addr());
    fs::write(&config, text).unwrap();
    let output = Command::new(BINARY)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (listen.api)")),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let output = Command::new(BINARY).arg("version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("stepgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_policy_explains_the_sample_policies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let output = Command::new(BINARY)
            .current_dir(root)
            .arg("check-policy")
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let out = run(&[
        "POST",
        "https://www.bank.example/api/payments/%2e%2e/payments/7",
        "--ip",
        "203.0.113.5",
    ]);
    assert!(
        out.contains(
            "policies[0] internal-bypass: no match: client 203.0.113.5 is in none of [10.0.0.0/8]"
        ),
        "{out}"
    );
    assert!(out.contains("policies[1] transfers: MATCH"), "{out}");
    assert!(out.contains("decision: step-up with auth type 'confirm_push', fresh for 300s, mode challenge (policy transfers)"), "{out}");

    let out = run(&[
        "POST",
        "https://WWW.bank.example./x/..;/Transfer.json",
        "--ip",
        "203.0.113.5",
    ]);
    assert!(
        out.contains("canonical: POST www.bank.example/transfer.json"),
        "{out}"
    );
    assert!(
        out.contains("forwarded upstream as: /Transfer.json"),
        "{out}"
    );
    assert!(out.contains("strictest reading: POST /transfer"), "{out}");
    assert!(out.contains("(policy transfers)"), "{out}");
    let out = run(&["POST", "https://bank.example/a%2Ftransfer"]);
    assert!(
        out.contains("decision: refused with 400: the path has an encoded slash"),
        "{out}"
    );

    let out = run(&["POST", "https://bank.example/transfer", "--ip", "10.9.8.7"]);
    assert!(
        out.contains("decision: allow (policy internal-bypass)"),
        "{out}"
    );

    let out = run(&[
        "GET",
        "https://bank.example/admin/users",
        "--header",
        "X-Env: prod",
    ]);
    assert!(
        out.contains("decision: step-up with auth type 'sms_code', fresh for 0s"),
        "{out}"
    );

    let out = run(&["GET", "https://bank.example/"]);
    assert!(
        out.contains("decision: allow (default: no policy matched)"),
        "{out}"
    );

    let output = Command::new(BINARY)
        .current_dir(root)
        .args(["check-policy", "GET", "not a url"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn validate_checks_policy_files_alone_and_through_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    fs::write(
        &rules,
        "policies:\n  - name: pay\n    match: { paths: [\"pay\"] }\n    action: allow\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&rules)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:22: policies[0].match.paths[0]: 'pay' is not a path pattern",
            rules.display()
        )),
        "{stderr}"
    );

    let config = dir.path().join("config.yaml");
    fs::write(
        &config,
        "secret_key: \"0123456789abcdef0123456789abcdef\"\nproxy: { policy_files: [\"*.yaml\"] }\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(64),
        "the config reads rules.yaml through policy_files"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rules.yaml:3:22: policies[0].match.paths[0]"),
        "{stderr}"
    );
}
