//! What the proxy reads from a request before deciding: its canonical view with every reading
//! the app's router may make (`RequestView`, the one place that turns a pingora request into
//! policy facts), the client address (through trusted proxies' `X-Forwarded-For`), the scheme,
//! cookies, and whether a browser asks. Also what it changes before forwarding: forwarded
//! headers set, stepgate's own cookies and headers removed.

use std::net::IpAddr;

use http::header::{COOKIE, HOST};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

use crate::domain::address;
use crate::domain::canonical::{
    CanonicalRequest, RawRequest, RouterModel, Unreadable, canonicalize,
};
use crate::domain::policy::{PolicySet, Readings, RequestFacts, Verdict};

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
static ASSERTION_HEADER_NAME: HeaderName =
    HeaderName::from_static(crate::domain::assertion::ASSERTION_HEADER);
/// The step-up assertion's header as written upstream.
pub const ASSERTION_HEADER_CASED: &str = "Stepgate-Assertion";
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The names as written upstream (pingora keeps header case).
const X_FORWARDED_FOR_CASED: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO_CASED: &str = "X-Forwarded-Proto";

/// The client as stepgate sees it: the first address in the `X-Forwarded-For` chain, read from
/// the right, that is not a trusted proxy; the socket peer when that is not trusted itself.
pub fn client_ip(peer: Option<IpAddr>, req: &RequestHeader, trusted: &[IpNet]) -> Option<IpAddr> {
    let forwarded = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.to_str().ok());
    Some(address::client_behind(peer?, forwarded, trusted))
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    address::is_trusted(ip, trusted)
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

/// Method-override headers that frameworks honour (Express `method-override`, Rails,
/// Symfony, ASP.NET Core, Google APIs).
static METHOD_OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];
/// More override values than this make every method a possible reading.
const MAX_OVERRIDES: usize = 4;

/// A request as every decision reads it: its canonical form (`domain::canonical`), the client
/// address, and the other readings the app's router may give it. Built once per request by
/// `RequestView::read`: the proxy, `stepgate check-policy` and the benches all go through it.
pub struct RequestView<'r> {
    pub canonical: CanonicalRequest<'r>,
    pub client_ip: Option<IpAddr>,
    /// Lower-case names and UTF-8 values, collected only when some policy looks at headers.
    pub headers: Vec<(&'r str, &'r str)>,
    overrides: [&'r str; MAX_OVERRIDES],
    override_count: usize,
    any_method: bool,
    folded: bool,
}

impl<'r> RequestView<'r> {
    /// Reads `req` under `model` for deciding with `policies`; `Err` when it cannot be read one
    /// way only (refuse with 400). Headers are collected, and method overrides looked for, only
    /// when some policy can tell them apart.
    pub fn read(
        req: &'r RequestHeader,
        client_ip: Option<IpAddr>,
        model: &RouterModel,
        policies: &PolicySet,
    ) -> Result<Self, Unreadable> {
        let with_headers = policies.needs_headers();
        let mut hosts = req.headers.get_all(HOST).iter();
        let raw = RawRequest {
            method: req.method.as_str(),
            target: req.raw_path(),
            authority: req.uri.authority().map(|a| a.as_str()),
            host: hosts.next().map(HeaderValue::as_bytes),
            second_host: hosts.next().is_some(),
        };
        let canonical = canonicalize(&raw, model)?;
        let mut view = Self {
            canonical,
            client_ip,
            headers: if with_headers {
                header_pairs(req)
            } else {
                Vec::new()
            },
            overrides: [""; MAX_OVERRIDES],
            override_count: 0,
            any_method: false,
            folded: model.case_insensitive,
        };
        if model.method_override && policies.names_methods() {
            // `_method` in a form or query string: only POST is overridden that way.
            view.any_method = view.canonical.method == "POST";
            // One pass over the names: cheaper than a hash lookup for each of the three, and
            // most requests carry none of them.
            let overrides = req.headers.iter().filter(|(name, _)| {
                name.as_str().starts_with("x-") && METHOD_OVERRIDE_HEADERS.contains(name)
            });
            for (_, value) in overrides {
                let Ok(text) = value.to_str() else {
                    view.any_method = true;
                    continue;
                };
                for method in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    if view.override_count == MAX_OVERRIDES {
                        view.any_method = true;
                        break;
                    }
                    view.overrides[view.override_count] = method;
                    view.override_count += 1;
                }
            }
        }
        Ok(view)
    }

    /// The canonical reading as policy facts.
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: &self.canonical.method,
            host: &self.canonical.host,
            path: &self.canonical.path,
            client_ip: self.client_ip,
            headers: &self.headers,
            folded: self.folded,
        }
    }

    /// The other readings the app's router may make.
    pub fn readings(&self) -> Readings<'_> {
        Readings {
            methods: &self.overrides[..self.override_count],
            any_method: self.any_method,
            path: self.canonical.path_without_suffix(),
        }
    }

    /// The strictest decision of `policies` over every reading.
    pub fn decide<'v>(&'v self, policies: &'v PolicySet) -> Verdict<'v> {
        policies.decide_strictest(&self.facts(), &self.readings())
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
        // Only stepgate asserts a step-up: a client's copy never reaches the app.
        req.remove_header(&ASSERTION_HEADER_NAME);
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
    // Requests come in runs from one peer (keep-alive connections, a front load balancer): the
    // last peer's value is kept per thread and shared, instead of written and copied anew.
    thread_local! {
        static LAST_PEER: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST_PEER.with_borrow_mut(|last| {
        if let Some((peer, value)) = last.as_ref()
            && *peer == ip
        {
            return Ok(value.clone());
        }
        let value = write_address(ip)?;
        *last = Some((ip, value.clone()));
        Ok(value)
    })
}

fn write_address(ip: IpAddr) -> pingora::Result<HeaderValue> {
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
    fn cookies_hosts_and_accept_are_read() {
        let req = request(&[
            ("cookie", "x=1; stepgate_grant=abc"),
            ("host", "Bank.Example:8443"),
            ("accept", "text/html,application/xhtml+xml"),
        ]);
        assert_eq!(cookie(&req, GRANT_COOKIE), Some("abc"));
        assert_eq!(cookie(&req, "nope"), None);
        assert!(wants_html(&req));
    }
}
