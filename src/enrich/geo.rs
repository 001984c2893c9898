//! The location part of the secure-message context: country code, region and city of the
//! address the portal passes at init, looked up in the MaxMind-format database that config
//! opened and checked at load.
//!
//! Names are taken in the language of the template they go into when the database has it
//! (MaxMind ships de, en, es, fr, ja, pt-BR, ru, zh-CN), else in English. The region is the largest subdivision
//! (England, not West Berkshire). A record with a country but no region or city is a result,
//! not a failure; an address that is not public, not in the database, or whose record has no
//! country is a failure the caller reports.
//!
//! May import: domain (and the `maxminddb` reader handed over by config).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use maxminddb::geoip2::{City, Names};

use crate::domain::context::GeolocationFailure;

/// Where an address is, as far as the database knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// ISO 3166-1 alpha-2, e.g. `GB`.
    pub country_code: String,
    pub region: Option<String>,
    pub city: Option<String>,
}

/// Looks addresses up in one opened database; cheap to clone.
#[derive(Clone)]
pub struct Geolocator {
    reader: Arc<maxminddb::Reader<Vec<u8>>>,
}

impl Geolocator {
    pub fn new(reader: Arc<maxminddb::Reader<Vec<u8>>>) -> Self {
        Self { reader }
    }

    /// The location of `ip`, names in `language` where the database has them.
    pub fn locate(
        &self,
        ip: IpAddr,
        language: Option<&str>,
    ) -> Result<Location, GeolocationFailure> {
        // `::ffff:81.2.69.142` is the IPv4 address it maps.
        let ip = ip.to_canonical();
        if !is_public(ip) {
            return Err(GeolocationFailure::NonPublicAddress);
        }
        let record = self
            .reader
            .lookup(ip)
            .and_then(|found| found.decode::<City>())
            .map_err(|error| GeolocationFailure::Unreadable(error.to_string()))?
            .ok_or(GeolocationFailure::NotFound)?;
        let country_code = record
            .country
            .iso_code
            .map(str::to_owned)
            .ok_or(GeolocationFailure::Incomplete)?;
        Ok(Location {
            country_code,
            region: record
                .subdivisions
                .first()
                .and_then(|region| localized(&region.names, language)),
            city: localized(&record.city.names, language),
        })
    }
}

/// The name in `language` (its primary subtag too: `de-AT` reads `de`), else in English.
fn localized(names: &Names<'_>, language: Option<&str>) -> Option<String> {
    let wanted = language.map(str::to_ascii_lowercase);
    let in_language = match wanted.as_deref() {
        Some(lang) => match lang.split('-').next() {
            Some("de") => names.german,
            Some("es") => names.spanish,
            Some("fr") => names.french,
            Some("ja") => names.japanese,
            Some("pt") => names.brazilian_portuguese,
            Some("ru") => names.russian,
            Some("zh") => names.simplified_chinese,
            _ => None,
        },
        None => None,
    };
    in_language
        .or(names.english)
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

/// Whether a database could place the address: not loopback, private, link-local, shared
/// (CGNAT), documentation, multicast or unspecified.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b);
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || shared
        || a == 0)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let unique_local = (first & 0xfe00) == 0xfc00;
    let link_local = (first & 0xffc0) == 0xfe80;
    let documentation = first == 0x2001 && ip.segments()[1] == 0x0db8;
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || documentation)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn geolocator() -> Geolocator {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/GeoIP2-City-Test.mmdb");
        Geolocator::new(Arc::new(maxminddb::Reader::open_readfile(path).unwrap()))
    }

    fn locate(ip: &str, language: Option<&str>) -> Result<Location, GeolocationFailure> {
        geolocator().locate(ip.parse().unwrap(), language)
    }

    fn place(country: &str, region: Option<&str>, city: Option<&str>) -> Location {
        Location {
            country_code: country.into(),
            region: region.map(str::to_owned),
            city: city.map(str::to_owned),
        }
    }

    #[test]
    fn london() {
        assert_eq!(
            locate("81.2.69.142", None),
            Ok(place("GB", Some("England"), Some("London")))
        );
    }

    #[test]
    fn boxford_takes_the_largest_subdivision_as_its_region() {
        assert_eq!(
            locate("2.125.160.216", Some("en")),
            Ok(place("GB", Some("England"), Some("Boxford")))
        );
    }

    #[test]
    fn linkoping_keeps_its_diacritics() {
        assert_eq!(
            locate("89.160.20.112", None),
            Ok(place("SE", Some("Östergötland County"), Some("Linköping")))
        );
    }

    #[test]
    fn names_come_in_the_language_asked_for_with_english_as_fallback() {
        // The test database has a German name for London's city but not for England.
        assert_eq!(
            locate("81.2.69.142", Some("de-AT")),
            Ok(place("GB", Some("England"), Some("London")))
        );
        // No Dutch names in MaxMind databases: English.
        assert_eq!(
            locate("89.160.20.112", Some("nl")),
            Ok(place("SE", Some("Östergötland County"), Some("Linköping")))
        );
    }

    #[test]
    fn a_country_without_region_or_city_is_a_result() {
        assert_eq!(locate("2001:218::1", None), Ok(place("JP", None, None)));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_looked_up_as_ipv4() {
        assert_eq!(
            locate("::ffff:81.2.69.142", None),
            Ok(place("GB", Some("England"), Some("London")))
        );
    }

    #[test]
    fn non_public_addresses_are_not_looked_up() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "192.0.2.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(
                locate(ip, None),
                Err(GeolocationFailure::NonPublicAddress),
                "{ip}"
            );
        }
    }

    #[test]
    fn a_public_address_missing_from_the_database_is_not_found() {
        assert_eq!(locate("8.8.8.8", None), Err(GeolocationFailure::NotFound));
    }
}
