//! Route policies: ordered rules, first match wins, an explicit default. A rule matches on host,
//! method, path, client network and headers; its decision is allow, deny or step-up (with the auth
//! type, freshness and mode). `explain` says for every rule why it matched or not, for
//! `stepgate check-policy`.
//!
//! Requests are matched in their canonical form (`domain::canonical`), and by default every
//! other reading the app's router may give them is matched too (`decide_strictest`: `HEAD` as
//! `GET`, method overrides, format suffixes); the strictest decision over all readings wins, so
//! a spelling the app routes to a protected handler is protected. Patterns are compiled into
//! the same canonical form.

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
    /// Dynamic linking: the parts of the request the approval (and any grant from it) is bound
    /// to. Empty: a grant admits any request to the policy while it is fresh.
    pub bind: Vec<BoundField>,
}

/// One part of a request an approval is bound to (`require.bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundField {
    /// A form field or a top-level JSON member of the body.
    Form(String),
    Query(String),
    Header(String),
    /// The whole body, byte for byte (its SHA-256).
    Body,
}

impl BoundField {
    /// Reads `form.amount`, `query.x`, `header.x` or `body`.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "body" {
            return Some(BoundField::Body);
        }
        let (source, name) = text.split_once('.')?;
        if name.is_empty() || name.contains(['{', '}', ' ']) {
            return None;
        }
        match source {
            "form" => Some(BoundField::Form(name.to_owned())),
            "query" => Some(BoundField::Query(name.to_owned())),
            "header" => Some(BoundField::Header(name.to_ascii_lowercase())),
            _ => None,
        }
    }

    /// How the field is written in config and shown: `form.amount`, `body`.
    pub fn label(&self) -> String {
        match self {
            BoundField::Form(name) => format!("form.{name}"),
            BoundField::Query(name) => format!("query.{name}"),
            BoundField::Header(name) => format!("header.{name}"),
            BoundField::Body => "body".to_owned(),
        }
    }
}

/// What an approval is bound to: the digest (kept with the held request, its grants and its
/// assertion) and the text the phone shows and signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub digest: String,
    pub text: String,
}

impl Bound {
    pub fn of(values: &[(String, String)]) -> Self {
        Self {
            digest: binding_digest(values),
            text: binding_text(values),
        }
    }
}

/// The digest an approval is bound to: SHA-256 over the bound `(label, value)` pairs in the
/// policy's order (as a JSON array, so no value can run into the next), base64url.
pub fn binding_digest(values: &[(String, String)]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let canonical = serde_json::to_vec(values).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&canonical))
}

/// The bound values as the phone shows and signs them: one `label: value` line each.
pub fn binding_text(values: &[(String, String)]) -> String {
    values
        .iter()
        .map(|(label, value)| format!("{label}: {value}"))
        .collect::<Vec<_>>()
        .join("\n")
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
    /// The same pattern case folded, for routers that ignore case.
    folded: PathShape,
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
        let shape = |segments: Vec<String>| {
            if pattern.contains('*') {
                PathShape::Glob(segments)
            } else {
                PathShape::Literal(format!("/{}", segments.join("/")))
            }
        };
        let segments = split(pattern);
        let folded = segments.iter().map(|s| s.to_lowercase()).collect();
        Self {
            text: pattern.to_owned(),
            shape: shape(segments),
            folded: shape(folded),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `path` must already be canonical (`domain::canonical`), and case folded when `folded`.
    pub fn matches(&self, path: &str, folded: bool) -> bool {
        let shape = if folded { &self.folded } else { &self.shape };
        match shape {
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
    pub headers: &'a [(&'a str, &'a str)],
    /// `path` is case folded (the router model ignores case): patterns compare folded.
    pub folded: bool,
}

/// Readings of a request beside its canonical one that the app's router may make.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings<'a> {
    /// Methods an override header names, upper case.
    pub methods: &'a [&'a str],
    /// The method may be overridden to any (`_method` in a `POST`).
    pub any_method: bool,
    /// Another path the router may take it for (the format suffix cut off).
    pub path: Option<&'a str>,
}

/// The outcome of `decide_strictest`: the decision and the reading that led to it.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'v> {
    pub policy: Option<&'v Policy>,
    pub decision: &'v Decision,
    pub method: &'v str,
    pub path: &'v str,
}

/// A method no policy names, standing for every such method.
const UNNAMED_METHOD: &str = "\0unnamed";

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
        self.matches_reading(facts, facts.method, facts.path)
    }

    /// `matches` for `facts` read with another method and path.
    fn matches_reading(&self, facts: &RequestFacts, method: &str, path: &str) -> bool {
        let method = || {
            self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        };
        let host = || self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(facts.host));
        let path =
            || self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path, facts.folded));
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
            let hit = self
                .paths
                .iter()
                .find(|p| p.matches(facts.path, facts.folded));
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

    /// Whether some rule names methods (else no reading of the method can change a decision,
    /// and callers need not look for method overrides).
    pub fn names_methods(&self) -> bool {
        self.policies
            .iter()
            .any(|policy| !policy.matcher.methods.is_empty())
    }

    /// The first matching rule (or `None` and the default).
    pub fn decide(&self, facts: &RequestFacts) -> (Option<&Policy>, &Decision) {
        match self.policies.iter().find(|p| p.matcher.matches(facts)) {
            Some(policy) => (Some(policy), &policy.decision),
            None => (None, &self.default),
        }
    }

    /// The strictest decision over every reading of the request (deny, then step-up, then
    /// allow; between equals the earlier rule): the canonical one, `HEAD` as `GET`, the
    /// overriding methods and the other path of `readings`.
    pub fn decide_strictest<'v>(
        &'v self,
        facts: &RequestFacts<'v>,
        readings: &Readings<'v>,
    ) -> Verdict<'v> {
        let head_as_get = (facts.method == "HEAD").then_some("GET");
        if head_as_get.is_none()
            && readings.methods.is_empty()
            && !readings.any_method
            && readings.path.is_none()
        {
            let (policy, decision) = self.decide(facts);
            return Verdict {
                policy,
                decision,
                method: facts.method,
                path: facts.path,
            };
        }
        let named = self
            .policies
            .iter()
            .filter(|_| readings.any_method)
            .flat_map(|policy| policy.matcher.methods.iter().map(String::as_str));
        let methods = std::iter::once(facts.method)
            .chain(head_as_get)
            .chain(readings.methods.iter().copied())
            .chain(named)
            .chain(readings.any_method.then_some(UNNAMED_METHOD));
        let paths = std::iter::once(facts.path).chain(readings.path);
        let mut best: Option<(u8, usize, Verdict<'v>)> = None;
        for method in methods {
            for path in paths.clone() {
                let found = self
                    .policies
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.matcher.matches_reading(facts, method, path));
                let (index, policy, decision) = match found {
                    Some((index, policy)) => (index, Some(policy), &policy.decision),
                    None => (usize::MAX, None, &self.default),
                };
                let rank = match decision {
                    Decision::Deny => 2,
                    Decision::StepUp(_) => 1,
                    Decision::Allow => 0,
                };
                let better = best
                    .as_ref()
                    .is_none_or(|(r, i, _)| rank > *r || (rank == *r && index < *i));
                if better {
                    let method = if method == UNNAMED_METHOD {
                        facts.method
                    } else {
                        method
                    };
                    let verdict = Verdict {
                        policy,
                        decision,
                        method,
                        path,
                    };
                    best = Some((rank, index, verdict));
                }
            }
        }
        match best {
            Some((_, _, verdict)) => verdict,
            None => Verdict {
                policy: None,
                decision: &self.default,
                method: facts.method,
                path: facts.path,
            },
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
    use crate::domain::canonical::{RouterModel, canonical_path};

    /// The proxy lower-cases the host before matching; the tests hand over what they got.
    fn facts<'a>(method: &'a str, host: &'a str, path: &str, ip: &str) -> RequestFacts<'a> {
        RequestFacts {
            method,
            host,
            // Leaked: a test's facts live for the test.
            path: canonical_path(path, &RouterModel::default())
                .unwrap()
                .path
                .into_owned()
                .leak(),
            client_ip: ip.parse().ok(),
            headers: &[("x-env", "prod")],
            folded: true,
        }
    }

    fn step_up(auth_type: &str) -> Decision {
        Decision::StepUp(StepUp {
            bind: Vec::new(),
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
            "/TRANSFER",
            "/transfer;jsessionid=1",
            "/x/..;/transfer",
            "/transfer.json",
            "/api/payments/x/../../payments/2",
        ] {
            let request = facts("POST", "www.bank.example", sneaky, "203.0.113.5");
            let without_suffix = request.path.rsplit_once('.').map(|(stem, _)| stem);
            let readings = Readings {
                path: without_suffix,
                ..Readings::default()
            };
            let policy = set.decide_strictest(&request, &readings).policy;
            assert_eq!(
                policy.map(|p| p.name.as_str()),
                Some("transfers"),
                "{sneaky}"
            );
        }
    }

    #[test]
    fn the_strictest_reading_wins() {
        let rule = |name: &str, methods: &[&str], path: &str, decision: Decision| Policy {
            name: name.into(),
            matcher: Matcher {
                methods: methods.iter().map(|m| (*m).to_owned()).collect(),
                paths: vec![PathPattern::new(path)],
                ..Matcher::default()
            },
            decision,
        };
        let set = PolicySet {
            policies: vec![
                rule("reads", &["GET"], "/account", Decision::Allow),
                rule("statements", &["GET"], "/statements/**", step_up("sms")),
                rule("delete", &["DELETE"], "/account", step_up("push")),
                rule("export", &[], "/export", Decision::Deny),
            ],
            default: Decision::Allow,
        };
        let name = |verdict: Verdict| verdict.policy.map(|p| p.name.clone());
        let head = facts("HEAD", "h", "/statements/1", "1.2.3.4");
        assert_eq!(
            name(set.decide_strictest(&head, &Readings::default())).as_deref(),
            Some("statements")
        );
        let overridden = Readings {
            methods: &["DELETE"],
            ..Readings::default()
        };
        let get = facts("GET", "h", "/account", "1.2.3.4");
        assert_eq!(
            name(set.decide_strictest(&get, &Readings::default())).as_deref(),
            Some("reads")
        );
        assert_eq!(
            name(set.decide_strictest(&get, &overridden)).as_deref(),
            Some("delete")
        );
        let post = facts("POST", "h", "/account", "1.2.3.4");
        let any = Readings {
            any_method: true,
            ..Readings::default()
        };
        let verdict = set.decide_strictest(&post, &any);
        assert_eq!(
            (name(verdict).as_deref(), verdict.method),
            (Some("delete"), "DELETE")
        );
        let suffixed = facts("GET", "h", "/export.csv", "1.2.3.4");
        let stem = Readings {
            path: Some("/export"),
            ..Readings::default()
        };
        assert_eq!(
            set.decide_strictest(&suffixed, &stem).decision,
            &Decision::Deny
        );
        assert_eq!(
            set.decide_strictest(&suffixed, &Readings::default())
                .decision,
            &Decision::Allow
        );
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
                PathPattern::new(pattern).matches(path, false),
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
                                request.headers = &[];
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
        other.headers = &[];
        assert_eq!(set.decide(&other).1, &Decision::Allow);
    }
}
