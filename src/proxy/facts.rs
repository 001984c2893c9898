//! What the proxy reads from a request before deciding: the client address (through trusted
//! proxies' `X-Forwarded-For`), the scheme, the host, cookies, and whether a browser asks. Also
//! what it changes before forwarding: forwarded headers set, stepgate's own cookies and headers
//! removed.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{COOKIE, HOST};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

pub const GRANT_COOKIE: &str = "stepgate_grant";
pub const BINDING_COOKIE: &str = "stepgate_binding";
pub const GRANT_HEADER: &str = "stepgate-grant";
pub const BINDING_HEADER: &str = "stepgate-binding";
/// What both cookie names start with.
const OWN_COOKIE_PREFIX: &[u8] = b"stepgate_";
/// What both header names start with.
const OWN_HEADER_PREFIX: &str = "stepgate-";
static GRANT_HEADER_NAME: HeaderName = HeaderName::from_static(GRANT_HEADER);
static BINDING_HEADER_NAME: HeaderName = HeaderName::from_static(BINDING_HEADER);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The names as written upstream (pingora keeps header case).
const X_FORWARDED_FOR_CASED: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO_CASED: &str = "X-Forwarded-Proto";

/// The client as stepgate sees it: the first address in the `X-Forwarded-For` chain, read from
/// the right, that is not a trusted proxy; the socket peer when that is not trusted itself.
pub fn client_ip(peer: Option<IpAddr>, req: &RequestHeader, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    for value in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return Some(client);
        };
        for hop in text.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(ip, trusted) {
                        return Some(ip);
                    }
                }
                Err(_) => return Some(client),
            }
        }
    }
    Some(client)
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// `https` or `http`: a trusted proxy's `X-Forwarded-Proto`, else how the client reached us.
pub fn scheme(
    peer: Option<IpAddr>,
    req: &RequestHeader,
    trusted: &[IpNet],
    tls: bool,
) -> &'static str {
    let forwarded = peer
        .filter(|ip| is_trusted(*ip, trusted))
        .and_then(|_| req.headers.get("x-forwarded-proto"))
        .and_then(|v| v.to_str().ok());
    match forwarded {
        Some(proto) if proto.trim().eq_ignore_ascii_case("https") => "https",
        Some(_) => "http",
        None if tls => "https",
        None => "http",
    }
}

/// The host the client asked for, lower case, without port; `None` when the request names two
/// different hosts (several `Host` headers, or an absolute URI whose host differs from `Host`),
/// which an upstream might read differently from the policy check, so such requests are refused.
pub fn unambiguous_host(req: &RequestHeader) -> Option<Cow<'_, str>> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(value), None) => Some(lower_case(strip_port(value.to_str().ok()?))),
        (None, _) => None,
        (Some(_), Some(_)) => return None,
    };
    let authority = req.uri.host().map(|h| lower_case(strip_port(h)));
    match (authority, header) {
        (Some(a), Some(h)) if a != h => None,
        (Some(a), _) => Some(a),
        (None, h) => Some(h.unwrap_or_default()),
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    // By bytes: `rsplit_once` with a char pattern costs more than the rest of the request's
    // host handling.
    let bytes = host.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        Some(colon) if bytes[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    }
}

/// Host names usually arrive in lower case already; only the others are copied.
fn lower_case(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

pub fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Browsers get pages and redirects; everything else JSON.
pub fn wants_html(req: &RequestHeader) -> bool {
    header(req, "accept").is_some_and(|accept| accept.contains("text/html"))
}

/// Lower-case name and UTF-8 value of every header (others skipped), for policy matching.
pub fn header_pairs(req: &RequestHeader) -> Vec<(&str, &str)> {
    req.headers
        .iter()
        .filter_map(|(name, value)| value.to_str().ok().map(|v| (name.as_str(), v)))
        .collect()
}

/// Makes a request fit to go upstream: stepgate's own cookies and headers removed, hop-by-hop
/// headers dropped, `X-Forwarded-For` (the chain only when the peer is a trusted proxy) and
/// `X-Forwarded-Proto` set.
pub fn prepare_upstream(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    scheme: &str,
    trusted: &[IpNet],
) -> pingora::Result<()> {
    // Clients rarely send our headers: one pass over the names finds out, where removing
    // each by name costs a hash lookup apiece on every request.
    if req
        .headers
        .keys()
        .any(|name| name.as_str().starts_with(OWN_HEADER_PREFIX))
    {
        req.remove_header(&GRANT_HEADER_NAME);
        req.remove_header(&BINDING_HEADER_NAME);
    }
    strip_own_cookies(req)?;
    let chain = match peer {
        Some(peer) if is_trusted(peer, trusted) => {
            let earlier = req
                .headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            Some(if earlier.is_empty() {
                address_value(peer)?
            } else {
                HeaderValue::try_from(format!("{earlier}, {peer}"))
                    .map_err(|_| invalid_header("X-Forwarded-For"))?
            })
        }
        Some(peer) => Some(address_value(peer)?),
        None => None,
    };
    let proto = if scheme == "https" {
        HeaderValue::from_static("https")
    } else {
        HeaderValue::from_static("http")
    };
    match chain {
        Some(chain) => req.insert_header(X_FORWARDED_FOR_CASED, chain)?,
        None => {
            req.remove_header(&X_FORWARDED_FOR);
        }
    }
    req.insert_header(X_FORWARDED_PROTO_CASED, proto)?;
    Ok(())
}

/// The peer address as a header value, IPv4 written by hand: `Display` costs more than the
/// rest of the header rewrite together, and every proxied request needs it.
fn address_value(ip: IpAddr) -> pingora::Result<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string())
            .map_err(|_| invalid_header("X-Forwarded-For"));
    };
    // At most "255.255.255.255".
    let mut text = [0u8; 15];
    let mut len = 0;
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).map_err(|_| invalid_header("X-Forwarded-For"))
}

fn invalid_header(name: &str) -> Box<pingora::Error> {
    pingora::Error::explain(
        pingora::ErrorType::InvalidHTTPHeader,
        format!("{name} would not be a valid header value"),
    )
}

fn strip_own_cookies(req: &mut RequestHeader) -> pingora::Result<()> {
    // Most requests carry no cookie of ours: looked for without copying anything.
    let ours = req.headers.get_all(COOKIE).iter().any(|value| {
        value
            .as_bytes()
            .windows(OWN_COOKIE_PREFIX.len())
            .any(|window| window == OWN_COOKIE_PREFIX)
    });
    if !ours {
        return Ok(());
    }
    let values: Vec<String> = req
        .headers
        .get_all(COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            name != GRANT_COOKIE && name != BINDING_COOKIE
        })
        .collect();
    if kept.len()
        == values
            .iter()
            .flat_map(|v| v.split(';'))
            .filter(|p| !p.trim().is_empty())
            .count()
    {
        return Ok(());
    }
    req.remove_header(&COOKIE);
    if !kept.is_empty() {
        req.insert_header("cookie", kept.join("; "))?;
    }
    Ok(())
}

/// Headers that describe one connection, not the request; never replayed.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let req = request(&[("x-forwarded-for", "203.0.113.9, 10.0.0.7")]);
        let peer = Some("10.0.0.1".parse().unwrap());
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(peer, &req, &trusted), "203.0.113.9".parse().ok());
        assert_eq!(client_ip(peer, &req, &[]), peer);
        let stranger = Some("198.51.100.1".parse().unwrap());
        assert_eq!(client_ip(stranger, &req, &trusted), stranger);
    }

    #[test]
    fn a_spoofed_leftmost_entry_does_not_win() {
        // The client wrote "10.1.1.1" itself; the trusted proxy appended the real address.
        let req = request(&[("x-forwarded-for", "10.1.1.1, 198.51.100.4")]);
        let peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            client_ip(peer, &req, &nets(&["10.0.0.0/8"])),
            "198.51.100.4".parse().ok()
        );
    }

    #[test]
    fn own_cookies_and_headers_never_go_upstream() {
        let mut req = request(&[
            ("cookie", "a=1; stepgate_grant=g1.x.y; b=2"),
            ("cookie", "stepgate_binding=zzz"),
            ("stepgate-grant", "g1.x.y"),
            ("stepgate-binding", "t"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        prepare_upstream(&mut req, Some("192.0.2.1".parse().unwrap()), "http", &[]).unwrap();
        let cookies: Vec<_> = req.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies.len(), 1);
        assert_eq!(cookies[0], "a=1; b=2");
        assert!(req.headers.get("stepgate-grant").is_none());
        assert!(req.headers.get("stepgate-binding").is_none());
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "192.0.2.1");
        assert_eq!(req.headers.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.200.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_value(ip).unwrap(), ip.to_string().as_str(), "{ip}");
        }
    }

    #[test]
    fn cookies_not_ours_are_left_exactly_as_sent() {
        let mut req = request(&[("cookie", "a=1;b=2;  stepgate=x"), ("cookie", "c=3")]);
        prepare_upstream(&mut req, None, "http", &[]).unwrap();
        let cookies: Vec<_> = req.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1;b=2;  stepgate=x", "c=3"]);
        assert!(req.headers.get("x-forwarded-for").is_none());
        for name in [GRANT_COOKIE, BINDING_COOKIE] {
            assert!(name.as_bytes().starts_with(OWN_COOKIE_PREFIX), "{name}");
        }
        for name in [GRANT_HEADER, BINDING_HEADER] {
            assert!(name.starts_with(OWN_HEADER_PREFIX), "{name}");
        }
    }

    #[test]
    fn trusted_chains_are_extended() {
        let mut req = request(&[("x-forwarded-for", "203.0.113.9"), ("cookie", "a=1")]);
        let trusted = nets(&["10.0.0.0/8"]);
        prepare_upstream(
            &mut req,
            Some("10.0.0.1".parse().unwrap()),
            "https",
            &trusted,
        )
        .unwrap();
        assert_eq!(
            req.headers.get("x-forwarded-for").unwrap(),
            "203.0.113.9, 10.0.0.1"
        );
        assert_eq!(req.headers.get("cookie").unwrap(), "a=1");
    }

    #[test]
    fn requests_naming_two_hosts_are_ambiguous() {
        let one = request(&[("host", "bank.example:8080")]);
        assert_eq!(unambiguous_host(&one).as_deref(), Some("bank.example"));
        let two = request(&[("host", "bank.example"), ("host", "evil.example")]);
        assert_eq!(unambiguous_host(&two), None);
        // pingora keeps only the path of an absolute-form target in the URI (and reconciles
        // its authority with Host itself), so Host is what policies see.
        let mut absolute =
            RequestHeader::build("POST", b"http://bank.example/transfer", None).unwrap();
        absolute.append_header("host", "bank.example").unwrap();
        assert_eq!(unambiguous_host(&absolute).as_deref(), Some("bank.example"));
        assert_eq!(unambiguous_host(&request(&[])).as_deref(), Some(""));
    }

    #[test]
    fn cookies_hosts_and_accept_are_read() {
        let req = request(&[
            ("cookie", "x=1; stepgate_grant=abc"),
            ("host", "Bank.Example:8443"),
            ("accept", "text/html,application/xhtml+xml"),
        ]);
        assert_eq!(cookie(&req, GRANT_COOKIE), Some("abc"));
        assert_eq!(cookie(&req, "nope"), None);
        assert_eq!(unambiguous_host(&req).as_deref(), Some("bank.example"));
        assert!(wants_html(&req));
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("bank.example:"), "bank.example");
        assert_eq!(strip_port("bank.example:8x"), "bank.example:8x");
        assert_eq!(strip_port("bänk.example:443"), "bänk.example");
        assert_eq!(strip_port("bank.example"), "bank.example");
    }
}
