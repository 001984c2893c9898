//! The one canonical view of a request that every decision reads: the policy matcher, the
//! proxy, `stepgate check-policy` and the benches. Computed once per request from what came on
//! the wire (method, request target, `Host`).
//!
//! - **Host**: the absolute-form authority when there is one (RFC 9112 §3.2.2: it replaces
//!   `Host`), else the single `Host`; lower case, without a trailing dot and without port. No
//!   usable host, two hosts, or a host that is not a name or an IP literal: refused.
//! - **Path**: percent-decoded once, `.` and `..` resolved, empty segments merged, `;`
//!   parameters cut off each segment (Tomcat, Spring, Jetty route `/transfer;jsessionid=1` as
//!   `/transfer`), blanks and trailing dots trimmed off segments (IIS, Spring's trimmed
//!   tokens), case folded (Express, ASP.NET Core ignore case). Paths that can be read two ways
//!   are refused: an encoded `/`, a backslash, NUL or another control character, a
//!   double-encoded escape, dot segments above the root, a segment of three or more dots.
//! - **Forwarding**: when resolving changed the segments (dot or empty segments), or the
//!   target was in absolute form, the request goes upstream as `forward_target` (origin form,
//!   the resolved segments as they were sent), so the app never executes a path other than the
//!   one matched.
//!
//! What the app's router does with the canonical path is modelled by `RouterModel`: by default
//! every common framework's liberties are assumed; an operator can narrow them for an app that
//! is known to be strict, never the other way round.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// How liberal the router of the app behind the proxy may be. Each `true` makes the matcher
/// treat more spellings as the protected route; all are on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterModel {
    /// The app may route `/TRANSFER` to `/transfer`.
    pub case_insensitive: bool,
    /// The app may cut `;` parameters off path segments.
    pub path_parameters: bool,
    /// The app may serve `/transfer.json` as `/transfer` (Rails formats, Spring suffixes).
    pub format_suffix: bool,
    /// The app may run another method than the request line names: `X-HTTP-Method-Override`,
    /// `X-HTTP-Method`, `X-Method-Override` headers, and a `_method` field on `POST`.
    pub method_override: bool,
}

impl Default for RouterModel {
    fn default() -> Self {
        Self {
            case_insensitive: true,
            path_parameters: true,
            format_suffix: true,
            method_override: true,
        }
    }
}

/// Why a request cannot be given one canonical reading; it is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("the request names no host")]
    NoHost,
    #[error("the request names more than one host")]
    TwoHosts,
    #[error("the host is not a valid name or address")]
    BadHost,
    #[error("the request target is not a path or an http(s) URL")]
    BadTarget,
    #[error("the path has a malformed percent-escape or is not UTF-8")]
    BadEscape,
    #[error("the path has an encoded slash")]
    EncodedSlash,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a control character")]
    ControlCharacter,
    #[error("the path is encoded twice")]
    DoubleEncoded,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path has a segment of dots only")]
    DotsSegment,
    #[error("the method is not valid")]
    BadMethod,
    #[error("CONNECT is not served")]
    Connect,
}

/// The canonical reading of one request, borrowed from it where nothing had to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalRequest<'a> {
    /// Upper case.
    pub method: Cow<'a, str>,
    /// Lower case, no trailing dot, no port; IPv6 literals without brackets.
    pub host: Cow<'a, str>,
    /// Rooted, no empty segments, no trailing slash (but `/` itself); case folded when the
    /// router model ignores case.
    pub path: Cow<'a, str>,
    /// The target to send upstream in place of the one received (origin form), when the
    /// received one differed from what was matched in more than per-segment spelling.
    pub forward_target: Option<String>,
    /// The `Host` to send upstream, when the host came from an absolute-form target.
    pub forward_host: Option<String>,
    /// The byte offset in `path` of the last segment's extension dot (`/transfer.json`),
    /// when the router model allows format suffixes.
    suffix_at: Option<usize>,
}

impl CanonicalRequest<'_> {
    /// The path without the last segment's extension, the other route a format-suffix
    /// router may take it for.
    pub fn path_without_suffix(&self) -> Option<&str> {
        self.suffix_at.map(|at| &self.path[..at])
    }
}

/// What the request carried, as received.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    pub method: &'a str,
    /// The request target as on the wire (origin, absolute or asterisk form).
    pub target: &'a [u8],
    /// The authority a protocol carries outside the target (HTTP/2 `:authority`).
    pub authority: Option<&'a str>,
    /// The first `Host` value and whether there was a second.
    pub host: Option<&'a [u8]>,
    pub second_host: bool,
}

/// Reads `raw` the one way every later step will.
pub fn canonicalize<'a>(
    raw: &RawRequest<'a>,
    model: &RouterModel,
) -> Result<CanonicalRequest<'a>, Unreadable> {
    let method = canonical_method(raw.method)?;
    if raw.second_host {
        return Err(Unreadable::TwoHosts);
    }
    let header_host = match raw.host {
        Some(bytes) => Some(std::str::from_utf8(bytes).map_err(|_| Unreadable::BadHost)?),
        None => None,
    };
    let target = std::str::from_utf8(raw.target).map_err(|_| Unreadable::BadEscape)?;
    let (authority, path, query, absolute) = split_target(target, method.as_ref())?;
    let authority = authority.or(raw.authority);
    let (host, forward_host) = match (authority, header_host) {
        (Some(authority), header) => {
            let host = canonical_host(authority)?;
            if let Some(header) = header
                && canonical_host(header)? != host
            {
                return Err(Unreadable::TwoHosts);
            }
            let forward = (absolute && header.is_none()).then(|| authority.to_owned());
            (host, forward)
        }
        (None, Some(header)) => (canonical_host(header)?, None),
        (None, None) => return Err(Unreadable::NoHost),
    };
    let resolved = canonical_path(path, model)?;
    let forward_target = match (&resolved.forward_path, absolute) {
        (None, false) => None,
        (forward, _) => {
            let path = forward.as_deref().unwrap_or(path);
            Some(match query {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            })
        }
    };
    let suffix_at = if model.format_suffix {
        suffix_dot(&resolved.path)
    } else {
        None
    };
    Ok(CanonicalRequest {
        method,
        host,
        path: resolved.path,
        forward_target,
        forward_host,
        suffix_at,
    })
}

fn canonical_method(method: &str) -> Result<Cow<'_, str>, Unreadable> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(token) {
        return Err(Unreadable::BadMethod);
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Unreadable::Connect);
    }
    Ok(if method.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(method.to_ascii_uppercase())
    } else {
        Cow::Borrowed(method)
    })
}

/// Authority (absolute form only), path, query, and whether the target was absolute.
type TargetParts<'a> = (Option<&'a str>, &'a str, Option<&'a str>, bool);

fn split_target<'a>(target: &'a str, method: &str) -> Result<TargetParts<'a>, Unreadable> {
    let split_query = |rest: &'a str| match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if target.starts_with('/') {
        let (path, query) = split_query(target);
        return Ok((None, path, query, false));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((None, "*", None, false))
        } else {
            Err(Unreadable::BadTarget)
        };
    }
    let (scheme, rest) = target.split_once("://").ok_or(Unreadable::BadTarget)?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(Unreadable::BadTarget);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Unreadable::BadHost);
    }
    let (path, query) = split_query(rest);
    // `http://host` and `http://host?x` have an empty path, which is `/`.
    let path = if path.is_empty() { "/" } else { path };
    Ok((Some(authority), path, query, true))
}

/// Lower case, without port and trailing dot; `None` for anything that is neither a DNS-style
/// name nor an IP literal.
pub fn canonical_host(text: &str) -> Result<Cow<'_, str>, Unreadable> {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let text = match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if blank(first) || blank(last) => text.trim_matches([' ', '\t']),
        _ => text,
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(Unreadable::BadHost)?;
        inside
            .parse::<Ipv6Addr>()
            .map_err(|_| Unreadable::BadHost)?;
        if !(after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|port| valid_port(port.as_bytes())))
        {
            return Err(Unreadable::BadHost);
        }
        return Ok(lower(inside));
    }
    // One pass over the bytes (this runs on every proxied request): the last colon splits off
    // the port; each label is checked as it goes.
    let bytes = text.as_bytes();
    let name = match bytes.iter().rposition(|&b| b == b':') {
        Some(colon) if valid_port(&bytes[colon + 1..]) => &text[..colon],
        Some(_) => return Err(Unreadable::BadHost),
        None => text,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(Unreadable::BadHost);
    }
    let mut label_length = 0;
    let mut upper = false;
    for &b in name.as_bytes() {
        match b {
            b'.' if label_length == 0 => return Err(Unreadable::BadHost),
            b'.' => label_length = 0,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label_length += 1,
            b'A'..=b'Z' => {
                upper = true;
                label_length += 1;
            }
            _ => return Err(Unreadable::BadHost),
        }
        if label_length > 63 {
            return Err(Unreadable::BadHost);
        }
    }
    if label_length == 0 {
        return Err(Unreadable::BadHost);
    }
    Ok(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// An empty port is allowed by RFC 3986 (`host:`) and means the default.
fn valid_port(port: &[u8]) -> bool {
    if port.len() > 5 {
        return false;
    }
    let mut value: u32 = 0;
    for &b in port {
        if !b.is_ascii_digit() {
            return false;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    value <= 65_535
}

fn lower(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// A resolved path and, when the segments sent differ from the ones matched, the path to
/// forward instead.
#[derive(Debug, PartialEq, Eq)]
pub struct ResolvedPath<'a> {
    pub path: Cow<'a, str>,
    pub forward_path: Option<String>,
}

/// The matching form of `raw` (a path without query). Most paths are already canonical and
/// come back borrowed: this runs on every proxied request.
pub fn canonical_path<'a>(
    raw: &'a str,
    model: &RouterModel,
) -> Result<ResolvedPath<'a>, Unreadable> {
    if raw == "*" {
        return Ok(ResolvedPath {
            path: Cow::Borrowed(raw),
            forward_path: None,
        });
    }
    if !raw.starts_with('/') {
        return Err(Unreadable::BadTarget);
    }
    if let Some(path) = already_canonical(raw, model) {
        return Ok(ResolvedPath {
            path: Cow::Borrowed(path),
            forward_path: None,
        });
    }
    resolve(raw, model)
}

/// `raw` itself (less a trailing slash) when resolving would not change it.
fn already_canonical<'a>(raw: &'a str, model: &RouterModel) -> Option<&'a str> {
    let path = match raw.strip_suffix('/') {
        Some("") => return Some("/"),
        Some(path) => path,
        None => raw,
    };
    let bytes = path.as_bytes();
    let mut previous = b'/';
    for &b in &bytes[1..] {
        let plain = match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => true,
            b'A'..=b'Z' => !model.case_insensitive,
            // A dot may start a dot segment or end a trimmed one: only inside a segment,
            // after something other than a dot or slash.
            b'.' => previous != b'/' && previous != b'.',
            b'/' => previous != b'/' && previous != b'.',
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => {
                true
            }
            _ => false,
        };
        if !plain {
            return None;
        }
        previous = b;
    }
    (previous != b'.' && previous != b'/').then_some(path)
}

fn resolve<'a>(raw: &'a str, model: &RouterModel) -> Result<ResolvedPath<'a>, Unreadable> {
    // Segments as matched, and as sent (for a rewritten forward path).
    let mut matched: Vec<String> = Vec::new();
    let mut sent: Vec<&str> = Vec::new();
    let mut rewritten = false;
    let raw_segments: Vec<&str> = raw[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    for (index, segment) in raw_segments.iter().enumerate() {
        let decoded = decode_segment(segment)?;
        let routed = if model.path_parameters {
            decoded.split(';').next().unwrap_or_default()
        } else {
            decoded.as_str()
        };
        let routed = routed.trim_matches(' ');
        match routed {
            "." => rewritten = true,
            ".." => {
                matched.pop().ok_or(Unreadable::AboveRoot)?;
                sent.pop();
                rewritten = true;
            }
            dots if !dots.is_empty() && dots.bytes().all(|b| b == b'.') => {
                return Err(Unreadable::DotsSegment);
            }
            other => {
                let trimmed = other.trim_end_matches(['.', ' ']);
                if trimmed.is_empty() {
                    // A trailing slash is kept upstream; any other empty segment is merged.
                    if !(index == last && segment.is_empty()) {
                        rewritten = true;
                    }
                    continue;
                }
                matched.push(if model.case_insensitive {
                    trimmed.to_lowercase()
                } else {
                    trimmed.to_owned()
                });
                sent.push(segment);
            }
        }
    }
    let forward_path = rewritten.then(|| {
        let trailing = raw.ends_with('/') && !sent.is_empty();
        let mut path = format!("/{}", sent.join("/"));
        if trailing {
            path.push('/');
        }
        path
    });
    Ok(ResolvedPath {
        path: Cow::Owned(format!("/{}", matched.join("/"))),
        forward_path,
    })
}

/// One segment percent-decoded, refused when the decoded form could be read another way.
fn decode_segment(segment: &str) -> Result<String, Unreadable> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3).ok_or(Unreadable::BadEscape)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| Unreadable::BadEscape)?;
            if byte == b'/' {
                return Err(Unreadable::EncodedSlash);
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| Unreadable::BadEscape)?;
    if decoded.contains('\\') {
        return Err(Unreadable::Backslash);
    }
    if decoded.chars().any(char::is_control) {
        return Err(Unreadable::ControlCharacter);
    }
    let still_escaped = decoded
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit());
    if still_escaped {
        return Err(Unreadable::DoubleEncoded);
    }
    Ok(decoded)
}

/// Where the extension of the last segment starts (`/a/transfer.json` -> the dot), when
/// there is one that leaves a non-empty name.
fn suffix_dot(path: &str) -> Option<usize> {
    // One backward pass over the last segment: the first dot in it, unless the segment starts
    // with it.
    let mut first_dot = None;
    for (at, &b) in path.as_bytes().iter().enumerate().rev() {
        match b {
            b'/' => return first_dot.filter(|&dot| dot > at + 1),
            b'.' => first_dot = Some(at),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin<'a>(method: &'a str, target: &'a str, host: &'a str) -> RawRequest<'a> {
        RawRequest {
            method,
            target: target.as_bytes(),
            authority: None,
            host: Some(host.as_bytes()),
            second_host: false,
        }
    }

    fn read(target: &str) -> Result<CanonicalRequest<'_>, Unreadable> {
        canonicalize(
            &origin("GET", target, "bank.example"),
            &RouterModel::default(),
        )
    }

    fn path(target: &str) -> Result<String, Unreadable> {
        read(target).map(|c| c.path.into_owned())
    }

    #[test]
    fn spellings_of_one_path_read_the_same() {
        for spelling in [
            "/transfer",
            "/transfer/",
            "/TRANSFER",
            "/Transfer",
            "//transfer",
            "/./transfer",
            "/x/../transfer",
            "/x/..;/transfer",
            "/transfer;jsessionid=1",
            "/transfer;",
            "/%74ransfer",
            "/%54RANSFER",
            "/transfer.",
            "/transfer%20",
            "/%20transfer",
            "/transfer/.",
            "/a/b/../../transfer",
            "/;x/transfer",
            "/%2e/transfer",
            "/x/%2e%2e/transfer",
            "/transfer?x=/y",
        ] {
            assert_eq!(path(spelling).as_deref(), Ok("/transfer"), "{spelling}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("/api%2Fpayments", Unreadable::EncodedSlash),
            ("/api%2fpayments", Unreadable::EncodedSlash),
            ("/transfer%00", Unreadable::ControlCharacter),
            ("/transfer%09", Unreadable::ControlCharacter),
            ("/a\\transfer", Unreadable::Backslash),
            ("/a%5ctransfer", Unreadable::Backslash),
            ("/%252e%252e/transfer", Unreadable::DoubleEncoded),
            ("/transfer%252F", Unreadable::DoubleEncoded),
            ("/../transfer", Unreadable::AboveRoot),
            ("/a/../../transfer", Unreadable::AboveRoot),
            ("/.../transfer", Unreadable::DotsSegment),
            ("/bad%zz", Unreadable::BadEscape),
            ("/bad%e9", Unreadable::BadEscape),
            ("/bad%", Unreadable::BadEscape),
        ];
        for (target, why) in cases {
            assert_eq!(path(target), Err(why), "{target}");
        }
    }

    #[test]
    fn resolved_segments_are_forwarded_as_matched() {
        let c = read("/x/../transfer?a=1").unwrap();
        assert_eq!(c.forward_target.as_deref(), Some("/transfer?a=1"));
        let c = read("/x/..;/Transfer;v=1/").unwrap();
        assert_eq!(c.forward_target.as_deref(), Some("/Transfer;v=1/"));
        let c = read("//transfer").unwrap();
        assert_eq!(c.forward_target.as_deref(), Some("/transfer"));
        // Per-segment spelling is the app's to decode: forwarded as sent.
        for plain in [
            "/%74ransfer",
            "/TRANSFER/",
            "/transfer;jsessionid=1",
            "/a.b",
        ] {
            assert_eq!(read(plain).unwrap().forward_target, None, "{plain}");
        }
    }

    #[test]
    fn hosts_are_canonical_and_the_absolute_form_wins() {
        for host in [
            "bank.example",
            "BANK.example",
            "bank.example.",
            "bank.example:443",
            "bank.example.:8443",
            "bank.example:",
        ] {
            let c = canonicalize(&origin("POST", "/transfer", host), &RouterModel::default());
            assert_eq!(c.unwrap().host, "bank.example", "{host}");
        }
        for bad in [
            "",
            "bank.example..",
            "bank .example",
            "bank.example:x",
            "bank.example:99999",
            "bank.example,evil.example",
            "a@bank.example",
            "bank%2eexample",
            "[::1",
            "[zz]",
        ] {
            let c = canonicalize(&origin("POST", "/transfer", bad), &RouterModel::default());
            assert!(c.is_err(), "{bad}");
        }
        let absolute = RawRequest {
            method: "POST",
            target: b"http://WWW.bank.example./transfer",
            authority: None,
            host: None,
            second_host: false,
        };
        let c = canonicalize(&absolute, &RouterModel::default()).unwrap();
        assert_eq!(c.host, "www.bank.example");
        assert_eq!(c.forward_target.as_deref(), Some("/transfer"));
        assert_eq!(c.forward_host.as_deref(), Some("WWW.bank.example."));
        let differing = RawRequest {
            host: Some(b"shop.example"),
            ..absolute
        };
        assert_eq!(
            canonicalize(&differing, &RouterModel::default()),
            Err(Unreadable::TwoHosts)
        );
        let none = RawRequest {
            target: b"/transfer",
            ..absolute
        };
        assert_eq!(
            canonicalize(&none, &RouterModel::default()),
            Err(Unreadable::NoHost)
        );
        let two = RawRequest {
            second_host: true,
            ..origin("GET", "/", "bank.example")
        };
        assert_eq!(
            canonicalize(&two, &RouterModel::default()),
            Err(Unreadable::TwoHosts)
        );
        let v6 = canonicalize(&origin("GET", "/", "[::1]:8080"), &RouterModel::default());
        assert_eq!(v6.unwrap().host, "::1");
        let empty_path = RawRequest {
            target: b"http://bank.example?x=1",
            ..absolute
        };
        let c = canonicalize(&empty_path, &RouterModel::default()).unwrap();
        assert_eq!(
            (c.path.as_ref(), c.forward_target.as_deref()),
            ("/", Some("/?x=1"))
        );
    }

    #[test]
    fn methods_and_odd_targets() {
        let model = RouterModel::default();
        let lower = canonicalize(&origin("post", "/t", "h"), &model).unwrap();
        assert_eq!(lower.method, "POST");
        assert_eq!(
            canonicalize(&origin("CONNECT", "/t", "h"), &model),
            Err(Unreadable::Connect)
        );
        assert_eq!(
            canonicalize(&origin("G T", "/t", "h"), &model),
            Err(Unreadable::BadMethod)
        );
        assert!(canonicalize(&origin("OPTIONS", "*", "h"), &model).is_ok());
        assert_eq!(
            canonicalize(&origin("GET", "*", "h"), &model),
            Err(Unreadable::BadTarget)
        );
        assert_eq!(
            canonicalize(&origin("GET", "ftp://h/x", "h"), &model),
            Err(Unreadable::BadTarget)
        );
    }

    #[test]
    fn a_strict_router_model_narrows_the_reading() {
        let strict = RouterModel {
            case_insensitive: false,
            path_parameters: false,
            format_suffix: false,
            method_override: false,
        };
        let read = |target| {
            canonicalize(&origin("GET", target, "h"), &strict).map(|c| c.path.into_owned())
        };
        assert_eq!(read("/TRANSFER").as_deref(), Ok("/TRANSFER"));
        assert_eq!(read("/transfer;x").as_deref(), Ok("/transfer;x"));
        let c = canonicalize(&origin("GET", "/transfer.json", "h"), &strict).unwrap();
        assert_eq!(c.path_without_suffix(), None);
        let c = canonicalize(
            &origin("GET", "/a/transfer.json", "h"),
            &RouterModel::default(),
        )
        .unwrap();
        assert_eq!(c.path_without_suffix(), Some("/a/transfer"));
        let c = canonicalize(&origin("GET", "/a/.hidden", "h"), &RouterModel::default());
        assert_eq!(c.unwrap().path_without_suffix(), None);
    }

    /// The borrowed fast path must give exactly what resolving gives.
    #[test]
    fn the_fast_path_agrees_with_resolving() {
        let models = [
            RouterModel::default(),
            RouterModel {
                case_insensitive: false,
                ..RouterModel::default()
            },
        ];
        let alphabet = ["a", "B", ".", "/", ";", "%41", " ", "~", "..", "é", "-"];
        let mut paths = vec!["/".to_owned()];
        for first in alphabet {
            for second in alphabet {
                for third in alphabet {
                    paths.push(format!("/{first}{second}{third}"));
                }
            }
        }
        for model in &models {
            for path in &paths {
                if let Some(fast) = already_canonical(path, model) {
                    let slow = resolve(path, model).unwrap();
                    assert_eq!(fast, slow.path, "{path} {model:?}");
                    assert_eq!(slow.forward_path, None, "{path}");
                }
            }
        }
    }

    /// A deliberately plain second canonicalizer: decode everything, cut parameters, trim,
    /// resolve, fold. Written apart from `resolve` to check it.
    fn reference(path: &str) -> Option<String> {
        let mut out: Vec<String> = Vec::new();
        for raw in path.split('/').skip(1) {
            let decoded = percent_decode_all(raw)?;
            if decoded.contains(['/', '\\', '%']) || decoded.chars().any(char::is_control) {
                return None;
            }
            let routed = decoded.split(';').next()?.trim_matches(' ').to_owned();
            match routed.as_str() {
                "" => {}
                "." => {}
                ".." => {
                    out.pop()?;
                }
                dots if dots.chars().all(|c| c == '.') => return None,
                other => {
                    let trimmed = other.trim_end_matches(['.', ' ']);
                    if !trimmed.is_empty() {
                        out.push(trimmed.to_lowercase());
                    }
                }
            }
        }
        Some(format!("/{}", out.join("/")))
    }

    fn percent_decode_all(text: &str) -> Option<String> {
        let mut bytes = Vec::new();
        let mut rest = text.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            if b == b'%' {
                let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &tail[2..];
            } else {
                bytes.push(b);
                rest = tail;
            }
        }
        String::from_utf8(bytes).ok()
    }

    /// Generated spellings of protected paths and hosts: whatever the spelling, the matcher
    /// either refuses it or steps it up, and never disagrees with the reference.
    #[test]
    fn generated_spellings_are_refused_or_protected() {
        use crate::domain::policy::{
            Decision, HostPattern, Matcher, Mode, PathPattern, Policy, PolicySet, Readings,
            RequestFacts, StepUp,
        };
        let step_up = Decision::StepUp(StepUp {
            bind: Vec::new(),
            auth_type: "sms".into(),
            freshness: std::time::Duration::ZERO,
            mode: Mode::Challenge,
            message: None,
        });
        let set = PolicySet {
            policies: vec![Policy {
                name: "protected".into(),
                matcher: Matcher {
                    hosts: vec![HostPattern::new("bank.example")],
                    paths: vec![
                        PathPattern::new("/transfer"),
                        PathPattern::new("/api/payments/**"),
                    ],
                    ..Matcher::default()
                },
                decision: step_up.clone(),
            }],
            default: Decision::Allow,
        };
        // xorshift64*: a fixed seed, so a failure is reproducible.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |bound: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % bound
        };
        let model = RouterModel::default();
        let mut protected = 0;
        for round in 0..20_000 {
            let base: &[&str] = if round % 2 == 0 {
                &["transfer"]
            } else {
                &["api", "payments", "7"]
            };
            let mut target = String::new();
            for segment in base {
                if next(6) == 0 {
                    target.push_str(["/x/..", "/.", "/", "/%2e", "/x/..;"][next(5)]);
                }
                target.push('/');
                for c in segment.chars() {
                    match next(8) {
                        0 => target.push(c.to_ascii_uppercase()),
                        1 => target.push_str(&format!("%{:02X}", c as u32)),
                        2 => target.push_str(&format!("%{:02x}", c as u32)),
                        _ => target.push(c),
                    }
                }
                match next(12) {
                    0 => target.push_str(";jsessionid=1"),
                    1 => target.push('.'),
                    2 => target.push_str("%20"),
                    3 => target.push_str(["%00", "%2F", "%5C", "\\", "%252e"][next(5)]),
                    _ => {}
                }
            }
            if next(4) == 0 {
                target.push('/');
            }
            let host = [
                "bank.example",
                "BANK.example.",
                "bank.example:443",
                "Bank.Example.:80",
            ][next(4)];
            let raw = RawRequest {
                method: ["POST", "post", "GET"][next(3)],
                target: target.as_bytes(),
                authority: None,
                host: Some(host.as_bytes()),
                second_host: false,
            };
            let expected = reference(&target);
            match canonicalize(&raw, &model) {
                Err(_) => {}
                Ok(canonical) => {
                    assert_eq!(
                        Some(canonical.path.as_ref()),
                        expected.as_deref(),
                        "{target}"
                    );
                    let facts = RequestFacts {
                        method: &canonical.method,
                        host: &canonical.host,
                        path: &canonical.path,
                        client_ip: None,
                        headers: &[],
                        folded: true,
                    };
                    let readings = Readings {
                        path: canonical.path_without_suffix(),
                        ..Readings::default()
                    };
                    let verdict = set.decide_strictest(&facts, &readings);
                    assert_eq!(verdict.decision, &step_up, "{target} on {host}");
                    protected += 1;
                }
            }
        }
        // Most spellings are readable: the test exercises the matcher, not only refusals.
        assert!(protected > 10_000, "{protected}");
    }
}
