//! Route policies: ordered rules, first match wins, an explicit default. A rule matches on host,
//! method, path, client network and headers; its decision is allow, deny or step-up (with the auth
//! type, freshness and mode). `explain` says for every rule why it matched or not, for
//! `stepgate check-policy`.
//!
//! Paths are matched in normalized form (percent-decoded, `.`/`..` resolved, repeated and
//! trailing slashes dropped), so `/a/../transfer`, `/%74ransfer` and `//transfer/` cannot slip
//! past a rule for `/transfer`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

/// How a step-up is presented to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer at once with a challenge (page or JSON); the held request is replayed on approval.
    Challenge,
    /// Keep the connection open until approval or timeout.
    Hold,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Challenge => "challenge",
            Mode::Hold => "hold",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    pub auth_type: String,
    /// How long an approval stays valid for this policy; zero means every request needs one.
    pub freshness: Duration,
    pub mode: Mode,
    /// Shown to the user; `{form.x}`, `{query.x}` and `{header.x}` come from the held request.
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    StepUp(StepUp),
}

impl Decision {
    pub fn describe(&self) -> String {
        match self {
            Decision::Allow => "allow".to_owned(),
            Decision::Deny => "deny".to_owned(),
            Decision::StepUp(step_up) => format!(
                "step-up with auth type '{}', fresh for {}s, mode {}",
                step_up.auth_type,
                step_up.freshness.as_secs(),
                step_up.mode.as_str()
            ),
        }
    }
}

/// A host name, exact or `*.domain` (any subdomain, not the domain itself); case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn new(pattern: &str) -> Self {
        Self(pattern.trim().to_ascii_lowercase())
    }

    pub fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            // Compared as bytes: `host` comes from the client and need not be ASCII.
            Some(domain) => {
                let host = host.as_bytes();
                host.len() > domain.len() + 1 && {
                    let dotted = &host[host.len() - domain.len() - 1..];
                    dotted[0] == b'.' && dotted[1..].eq_ignore_ascii_case(domain.as_bytes())
                }
            }
            None => host.eq_ignore_ascii_case(&self.0),
        }
    }
}

/// A path glob over segments: `*` is one whole segment, `**` any number of segments (none
/// included), and `*` inside a segment any characters within it (`*.pdf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    shape: PathShape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathShape {
    /// No `*`: the one normalized path the pattern matches, compared directly.
    Literal(String),
    /// The pattern's segments, matched one by one.
    Glob(Vec<String>),
}

impl PathPattern {
    pub fn new(pattern: &str) -> Self {
        let segments = split(pattern);
        let shape = if pattern.contains('*') {
            PathShape::Glob(segments)
        } else {
            PathShape::Literal(format!("/{}", segments.join("/")))
        };
        Self {
            text: pattern.to_owned(),
            shape,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `path` must already be normalized (see `normalize_path`).
    pub fn matches(&self, path: &str) -> bool {
        match &self.shape {
            PathShape::Literal(literal) => path == literal,
            PathShape::Glob(segments) => match_segments(segments, path_segments(path)),
        }
    }
}

fn split(path: &str) -> Vec<String> {
    path_segments(path).map(str::to_owned).collect()
}

/// The non-empty segments of `path`, lazily: matching runs on every proxied request, so it
/// walks the path instead of collecting it.
fn path_segments(path: &str) -> impl Iterator<Item = &str> + Clone {
    path.split('/').filter(|segment| !segment.is_empty())
}

fn match_segments<'a>(pattern: &[String], mut path: impl Iterator<Item = &'a str> + Clone) -> bool {
    match pattern.split_first() {
        None => path.next().is_none(),
        Some((first, rest)) if first == "**" => loop {
            if match_segments(rest, path.clone()) {
                return true;
            }
            if path.next().is_none() {
                return false;
            }
        },
        Some((first, rest)) => match path.next() {
            Some(segment) => match_segment(first, segment) && match_segments(rest, path),
            None => false,
        },
    }
}

/// `*` within a segment matches any run of characters.
fn match_segment(pattern: &str, segment: &str) -> bool {
    let Some((first, after_first)) = pattern.split_once('*') else {
        return pattern == segment;
    };
    let (middles, last) = after_first.rsplit_once('*').unwrap_or(("", after_first));
    if !segment.starts_with(first)
        || segment.len() < first.len() + last.len()
        || !segment.ends_with(last)
    {
        return false;
    }
    let mut rest = &segment[first.len()..segment.len() - last.len()];
    for middle in middles.split('*') {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The form a path is matched in: query dropped, percent-escapes decoded (an encoded `/` counts
/// as one, since upstreams may decode it), `.` and `..` resolved, empty segments dropped. `None`
/// when the path cannot be made sense of (bad escapes, not UTF-8, `..` above the root): callers
/// must refuse such requests rather than guess.
///
/// Most paths are already in that form; they come back borrowed, since this runs on every
/// proxied request.
pub fn normalize_path(raw: &str) -> Option<Cow<'_, str>> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if is_normal(path) {
        return Some(Cow::Borrowed(path));
    }
    resolve_path(path).map(Cow::Owned)
}

/// Rooted, without escapes and without empty, `.` or `..` segments: what `resolve_path` would
/// return unchanged.
fn is_normal(path: &str) -> bool {
    path == "/"
        || path.strip_prefix('/').is_some_and(|rest| {
            !rest.contains('%')
                && rest
                    .split('/')
                    .all(|segment| !matches!(segment, "" | "." | ".."))
        })
}

fn resolve_path(path: &str) -> Option<String> {
    let decoded = percent_decode(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a rule looks at. Empty lists match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    pub hosts: Vec<HostPattern>,
    /// Upper case.
    pub methods: Vec<String>,
    pub paths: Vec<PathPattern>,
    pub networks: Vec<IpNet>,
    /// Lower-case name and the exact value required (`*`: present with any value).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub matcher: Matcher,
    pub decision: Decision,
}

/// The facts of one request that policies look at, borrowed from the request: the proxy builds
/// one for every request it sees.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Lower case, without port.
    pub host: &'a str,
    /// Normalized (see `normalize_path`).
    pub path: &'a str,
    pub client_ip: Option<IpAddr>,
    /// Lower-case names.
    pub headers: Vec<(&'a str, &'a str)>,
}

/// Why one rule did or did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleExplanation {
    pub index: usize,
    pub name: String,
    pub matched: bool,
    pub reasons: Vec<String>,
}

impl Matcher {
    /// Whether every criterion holds: `check`'s verdict without its reasons, cheapest criterion
    /// first. This runs for every rule on every proxied request, so it neither allocates nor
    /// formats; `explain` uses `check`.
    fn matches(&self, facts: &RequestFacts) -> bool {
        let method = || {
            self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(facts.method))
        };
        let host = || self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(facts.host));
        let path = || self.paths.is_empty() || self.paths.iter().any(|p| p.matches(facts.path));
        let network = || {
            self.networks.is_empty()
                || facts
                    .client_ip
                    .is_some_and(|ip| self.networks.iter().any(|net| net.contains(&ip)))
        };
        let headers = || {
            self.headers.iter().all(|(name, wanted)| {
                facts
                    .headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .is_some_and(|(_, value)| wanted == "*" || *value == wanted)
            })
        };
        method() && host() && path() && network() && headers()
    }

    /// Every criterion's verdict, in a fixed order; the rule matches when all hold.
    fn check(&self, facts: &RequestFacts) -> Vec<(bool, String)> {
        let mut checks = Vec::new();
        if !self.hosts.is_empty() {
            let hit = self.hosts.iter().find(|h| h.matches(facts.host));
            checks.push(match hit {
                Some(h) => (true, format!("host {} matches '{}'", facts.host, h.0)),
                None => (
                    false,
                    format!(
                        "host {} matches none of {}",
                        facts.host,
                        list(self.hosts.iter().map(|h| h.0.as_str()))
                    ),
                ),
            });
        }
        if !self.methods.is_empty() {
            let hit = self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(facts.method));
            let verb = if hit { "is one of" } else { "is none of" };
            checks.push((
                hit,
                format!(
                    "method {} {verb} {}",
                    facts.method,
                    list(self.methods.iter().map(String::as_str))
                ),
            ));
        }
        if !self.paths.is_empty() {
            let hit = self.paths.iter().find(|p| p.matches(facts.path));
            checks.push(match hit {
                Some(p) => (
                    true,
                    format!("path {} matches '{}'", facts.path, p.as_str()),
                ),
                None => (
                    false,
                    format!(
                        "path {} matches none of {}",
                        facts.path,
                        list(self.paths.iter().map(PathPattern::as_str))
                    ),
                ),
            });
        }
        if !self.networks.is_empty() {
            let networks = list(
                self.networks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            );
            checks.push(match facts.client_ip {
                Some(ip) => match self.networks.iter().find(|n| n.contains(&ip)) {
                    Some(net) => (true, format!("client {ip} is in {net}")),
                    None => (false, format!("client {ip} is in none of {networks}")),
                },
                None => (
                    false,
                    format!("client address unknown, so not in {networks}"),
                ),
            });
        }
        for (name, wanted) in &self.headers {
            let value = facts
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v);
            checks.push(match value {
                Some(v) if wanted == "*" || v == wanted => {
                    (true, format!("header {name} is '{v}'"))
                }
                Some(v) => (false, format!("header {name} is '{v}', not '{wanted}'")),
                None => (false, format!("header {name} is absent")),
            });
        }
        if checks.is_empty() {
            checks.push((true, "matches every request (no criteria)".to_owned()));
        }
        checks
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// The ordered rules and the default for requests no rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub default: Decision,
}

impl Default for PolicySet {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            default: Decision::Allow,
        }
    }
}

impl PolicySet {
    /// Whether some rule looks at headers (else callers need not collect them).
    pub fn needs_headers(&self) -> bool {
        self.policies
            .iter()
            .any(|policy| !policy.matcher.headers.is_empty())
    }

    /// The first matching rule (or `None` and the default).
    pub fn decide(&self, facts: &RequestFacts) -> (Option<&Policy>, &Decision) {
        match self.policies.iter().find(|p| p.matcher.matches(facts)) {
            Some(policy) => (Some(policy), &policy.decision),
            None => (None, &self.default),
        }
    }

    /// Every rule up to and including the first match, each with its reasons.
    pub fn explain(&self, facts: &RequestFacts) -> Vec<RuleExplanation> {
        let mut out = Vec::new();
        for (index, policy) in self.policies.iter().enumerate() {
            let checks = policy.matcher.check(facts);
            let matched = checks.iter().all(|(ok, _)| *ok);
            let reasons = if matched {
                checks.into_iter().map(|(_, why)| why).collect()
            } else {
                checks
                    .into_iter()
                    .filter(|(ok, _)| !ok)
                    .map(|(_, why)| why)
                    .collect()
            };
            out.push(RuleExplanation {
                index,
                name: policy.name.clone(),
                matched,
                reasons,
            });
            if matched {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy lower-cases the host before matching; the tests hand over what they got.
    fn facts<'a>(method: &'a str, host: &'a str, path: &str, ip: &str) -> RequestFacts<'a> {
        RequestFacts {
            method,
            host,
            // Leaked: a test's facts live for the test.
            path: normalize_path(path).unwrap().into_owned().leak(),
            client_ip: ip.parse().ok(),
            headers: vec![("x-env", "prod")],
        }
    }

    fn step_up(auth_type: &str) -> Decision {
        Decision::StepUp(StepUp {
            auth_type: auth_type.into(),
            freshness: Duration::from_secs(300),
            mode: Mode::Challenge,
            message: None,
        })
    }

    fn set() -> PolicySet {
        PolicySet {
            policies: vec![
                Policy {
                    name: "internal-bypass".into(),
                    matcher: Matcher {
                        networks: vec!["10.0.0.0/8".parse().unwrap()],
                        ..Matcher::default()
                    },
                    decision: Decision::Allow,
                },
                Policy {
                    name: "transfers".into(),
                    matcher: Matcher {
                        hosts: vec![
                            HostPattern::new("bank.example"),
                            HostPattern::new("*.bank.example"),
                        ],
                        methods: vec!["POST".into()],
                        paths: vec![
                            PathPattern::new("/transfer"),
                            PathPattern::new("/api/payments/**"),
                        ],
                        ..Matcher::default()
                    },
                    decision: step_up("confirm_push"),
                },
            ],
            default: Decision::Allow,
        }
    }

    #[test]
    fn first_match_wins_and_the_default_applies_otherwise() {
        let set = set();
        let (policy, decision) =
            set.decide(&facts("POST", "bank.example", "/transfer", "203.0.113.5"));
        assert_eq!(policy.map(|p| p.name.as_str()), Some("transfers"));
        assert_eq!(decision, &step_up("confirm_push"));
        let (policy, decision) =
            set.decide(&facts("POST", "bank.example", "/transfer", "10.1.1.1"));
        assert_eq!(
            (policy.map(|p| p.name.as_str()), decision),
            (Some("internal-bypass"), &Decision::Allow)
        );
        let (policy, decision) =
            set.decide(&facts("GET", "bank.example", "/transfer", "203.0.113.5"));
        assert_eq!((policy, decision), (None, &Decision::Allow));
    }

    #[test]
    fn encodings_and_dot_segments_do_not_bypass_a_rule() {
        let set = set();
        for sneaky in [
            "/a/../transfer",
            "/%74ransfer",
            "//transfer/",
            "/./transfer",
            "/api%2Fpayments/1",
            "/api/payments/x/../../payments/2",
        ] {
            let (policy, _) = set.decide(&facts("POST", "www.bank.example", sneaky, "203.0.113.5"));
            assert_eq!(
                policy.map(|p| p.name.as_str()),
                Some("transfers"),
                "{sneaky}"
            );
        }
        assert_eq!(normalize_path("/../etc"), None);
        assert_eq!(normalize_path("/bad%zz"), None);
        assert_eq!(normalize_path("/a?b=/transfer").as_deref(), Some("/a"));
    }

    /// The borrowed fast path must give exactly what resolving gives, and take only paths that
    /// resolving leaves unchanged.
    #[test]
    fn normal_paths_are_borrowed_and_others_resolved() {
        for path in [
            "/",
            "/a",
            "/a/b.c",
            "/a/.b",
            "/a/..b",
            "/a/b/",
            "//a",
            "/a//b",
            "/./a",
            "/a/.",
            "/a/..",
            "/a/b/../c",
            "/%61",
            "/a%2Fb",
            "",
            "*",
            "a/b",
            "/a?x=1",
            "/a#f",
            "/é/ü",
        ] {
            let normalized = normalize_path(path);
            let resolved = resolve_path(path.split(['?', '#']).next().unwrap());
            assert_eq!(normalized.as_deref(), resolved.as_deref(), "{path}");
            if let Some(Cow::Borrowed(borrowed)) = normalized {
                assert!(is_normal(borrowed), "{path}");
            }
        }
        assert!(matches!(
            normalize_path("/account/overview"),
            Some(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize_path("/account/"), Some(Cow::Owned(_))));
    }

    #[test]
    fn globs() {
        let cases = [
            ("/api/payments/**", "/api/payments", true),
            ("/api/payments/**", "/api/payments/1/confirm", true),
            ("/api/*/confirm", "/api/7/confirm", true),
            ("/api/*/confirm", "/api/7/8/confirm", false),
            ("/files/*.pdf", "/files/statement.pdf", true),
            ("/files/*.pdf", "/files/statement.pdf.exe", false),
            ("/transfer", "/transfers", false),
            ("/**", "/", true),
            ("/**/confirm", "/a/b/confirm", true),
            ("/**/confirm", "/a/b/confirm/x", false),
            ("/a/**/b/**", "/a/x/b/y/z", true),
            ("/files/*-*.pdf", "/files/2024-01.pdf", true),
            ("/files/*-*.pdf", "/files/202401.pdf", false),
            ("/files/a*b*c", "/files/abc", true),
            ("/files/a*b*c", "/files/acb", false),
            ("/files/*", "/files", false),
            ("/transfer/", "/transfer", true),
            ("//transfer", "/transfer", true),
            ("/", "/", true),
            ("/", "/a", false),
            ("/a/b", "/a", false),
            ("/a", "/a/b", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(
                PathPattern::new(pattern).matches(path),
                expected,
                "{pattern} vs {path}"
            );
        }
        assert!(HostPattern::new("*.bank.example").matches("WWW.Bank.Example"));
        assert!(!HostPattern::new("*.bank.example").matches("bank.example"));
        assert!(!HostPattern::new("*.bank.example").matches("evilbank.example"));
        assert!(!HostPattern::new("*.bank.example").matches(".bank.example"));
        assert!(!HostPattern::new("*.bank.example").matches("é.ank.example"));
        assert!(HostPattern::new("Bank.Example").matches("bank.EXAMPLE"));
    }

    /// `decide` uses the allocation-free `matches`, `explain` the reasoned `check`: they must
    /// never disagree, or `check-policy` would explain a decision the proxy does not make.
    #[test]
    fn the_fast_verdict_agrees_with_the_explained_one() {
        let matchers = [
            Matcher::default(),
            Matcher {
                hosts: vec![
                    HostPattern::new("*.bank.example"),
                    HostPattern::new("shop.example"),
                ],
                ..Matcher::default()
            },
            Matcher {
                methods: vec!["POST".into(), "PUT".into()],
                paths: vec![
                    PathPattern::new("/api/**"),
                    PathPattern::new("/files/*.pdf"),
                ],
                ..Matcher::default()
            },
            Matcher {
                networks: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                headers: vec![("x-env".into(), "*".into())],
                ..Matcher::default()
            },
            Matcher {
                headers: vec![("x-env".into(), "test".into())],
                methods: vec!["GET".into()],
                ..Matcher::default()
            },
        ];
        let mut compared = 0;
        for method in ["GET", "post", "PUT"] {
            for host in ["bank.example", "www.bank.example", "SHOP.example", ""] {
                for path in ["/", "/api", "/api/x/y", "/files/a.pdf", "/files/a/b.pdf"] {
                    for ip in ["10.2.3.4", "203.0.113.9", "2001:db8::1", "none"] {
                        for with_header in [true, false] {
                            let mut request = facts(method, host, path, ip);
                            if !with_header {
                                request.headers.clear();
                            }
                            for matcher in &matchers {
                                let explained = matcher.check(&request).iter().all(|(ok, _)| *ok);
                                assert_eq!(
                                    matcher.matches(&request),
                                    explained,
                                    "{matcher:?} on {request:?}"
                                );
                                compared += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(compared, 3 * 4 * 5 * 4 * 2 * matchers.len());
    }

    #[test]
    fn explain_says_why_each_rule_did_or_did_not_match() {
        let explained = set().explain(&facts("POST", "bank.example", "/transfer", "203.0.113.5"));
        assert_eq!(explained.len(), 2);
        assert!(!explained[0].matched);
        assert_eq!(
            explained[0].reasons,
            ["client 203.0.113.5 is in none of [10.0.0.0/8]"]
        );
        assert!(explained[1].matched);
        assert_eq!(
            explained[1].reasons,
            [
                "host bank.example matches 'bank.example'",
                "method POST is one of [POST]",
                "path /transfer matches '/transfer'"
            ]
        );
    }

    #[test]
    fn header_criteria() {
        let matcher = Matcher {
            headers: vec![("x-env".into(), "prod".into())],
            ..Matcher::default()
        };
        let policy = Policy {
            name: "h".into(),
            matcher,
            decision: Decision::Deny,
        };
        let set = PolicySet {
            policies: vec![policy],
            default: Decision::Allow,
        };
        assert_eq!(
            set.decide(&facts("GET", "a", "/", "1.2.3.4")).1,
            &Decision::Deny
        );
        let mut other = facts("GET", "a", "/", "1.2.3.4");
        other.headers.clear();
        assert_eq!(set.decide(&other).1, &Decision::Allow);
    }
}
