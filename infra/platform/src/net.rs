//! Addresses as settings name them: one address (`10.0.0.7`) or a range of them
//! (`172.16.0.0/12`), for the reverse proxies whose `X-Forwarded-For` is believed and which
//! the per-address connection cap exempts; and URLs of HTTP services, checked before use.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One address or a CIDR range; an IPv4 client seen as `::ffff:a.b.c.d` falls in the IPv4
/// range that holds `a.b.c.d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange(IpNet);

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// Whether any of `ranges` holds `ip`.
pub fn in_any(ranges: &[IpRange], ip: IpAddr) -> bool {
    ranges.iter().any(|range| range.contains(ip))
}

impl From<IpAddr> for IpRange {
    fn from(ip: IpAddr) -> Self {
        Self(IpNet::from(ip.to_canonical()))
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(ip.into());
        }
        text.parse::<IpNet>()
            .map(|net| Self(net.trunc()))
            .map_err(|_| {
                format!(
                    "`{text}` is neither an address (10.0.0.7, ::1) nor a range of them \
                     (172.16.0.0/12, fd00::/8)"
                )
            })
    }
}

/// Whether `url` is an absolute http(s) URL with a host; the reason when not (the URL is not
/// repeated: it may carry credentials).
pub fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{}:// is not http:// or https://", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL names no host".into());
    }
    Ok(())
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_and_single_addresses_hold_what_they_name() {
        let docker: IpRange = "172.16.0.0/12".parse().unwrap();
        assert!(docker.contains(ip("172.18.0.5")));
        assert!(docker.contains(ip("172.31.255.255")));
        assert!(!docker.contains(ip("172.32.0.1")));
        assert!(
            docker.contains(ip("::ffff:172.18.0.5")),
            "IPv4 seen over IPv6"
        );
        let one: IpRange = "10.0.0.7".parse().unwrap();
        assert!(one.contains(ip("10.0.0.7")));
        assert!(!one.contains(ip("10.0.0.8")));
        let v6: IpRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        // host bits set are read as the range that holds them
        let loose: IpRange = "10.1.2.3/8".parse().unwrap();
        assert!(loose.contains(ip("10.200.0.1")));
        assert_eq!(loose.to_string(), "10.0.0.0/8");
        assert!(in_any(&[one, docker], ip("172.20.1.1")));
        assert!(!in_any(&[], ip("172.20.1.1")));
    }

    #[test]
    fn http_urls_are_told_from_the_rest() {
        assert!(check_http_url("http://auth:8085/.well-known/jwks.json").is_ok());
        assert!(check_http_url("https://h.example/x").is_ok());
        assert!(
            check_http_url("ftp://h.example/x")
                .unwrap_err()
                .contains("ftp")
        );
        assert!(check_http_url("auth:8085/jwks").is_err());
        assert!(
            check_http_url("not a url")
                .unwrap_err()
                .contains("not a URL")
        );
    }

    #[test]
    fn what_is_not_an_address_says_so() {
        for bad in [
            "",
            "10.0.0.0/33",
            "proxy.internal",
            "10.0.0.0/",
            "1.2.3.4.5",
        ] {
            let err = bad.parse::<IpRange>().unwrap_err();
            assert!(err.contains("neither an address"), "{bad}: {err}");
        }
    }
}
