//! Which address a request comes from: the socket peer, or, when the peer is a trusted proxy,
//! the first address of the `X-Forwarded-For` chain read from the right that is not a trusted
//! proxy. One rule for the proxy and the API (per-client quotas, identity headers).

use std::net::IpAddr;

use ipnet::IpNet;

/// An IPv4-mapped IPv6 address as the IPv4 address it is; any other unchanged.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a per-client quota counts `ip` under: the IPv4 address, or the IPv6 /64 (one
/// subscriber's network: addresses within it cost nothing to rotate).
pub fn quota_key(ip: IpAddr) -> String {
    match unmapped(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            format!(
                "{:x}:{:x}:{:x}:{:x}::/64",
                segments[0], segments[1], segments[2], segments[3]
            )
        }
    }
}

/// Whether `ip` (IPv4-mapped forms included) is in one of the `trusted` networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = unmapped(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client behind `peer`: `peer` itself unless it is trusted; then the `X-Forwarded-For`
/// values (each header's text, in order; `None` for one that is not text) read from the right,
/// hop by hop, up to the first untrusted address. A hop that is not an address stops the walk at
/// the last address read.
pub fn client_behind<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = Option<&'a str>>,
    trusted: &[IpNet],
) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for value in forwarded.rev() {
        let Some(text) = value else {
            return client;
        };
        for hop in text.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(ip, trusted) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let trusted = nets(&["10.0.0.0/8"]);
        let chain = || [Some("203.0.113.9, 10.0.0.5")].into_iter();
        assert_eq!(
            client_behind(proxy, chain(), &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_behind(stranger, chain(), &trusted), stranger);
        assert_eq!(client_behind(proxy, chain(), &[]), proxy);
        assert_eq!(
            client_behind(proxy, [Some("junk, 10.0.0.9")].into_iter(), &trusted),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert!(is_trusted(mapped, &trusted));
    }

    #[test]
    fn quotas_count_ipv6_clients_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(quota_key(a), quota_key(b));
        assert_ne!(quota_key(a), quota_key(c));
        assert_eq!(
            quota_key("::ffff:198.51.100.7".parse().unwrap()),
            "198.51.100.7"
        );
    }
}
