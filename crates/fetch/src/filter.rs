//! Import filtering, as Glance's `[import_filtering_opts]`: which schemes, hosts
//! and ports a server-side fetch may reach. A non-empty allowed list wins over
//! its disallowed list. On top, addresses that are nobody's business to fetch
//! from (loopback, private, link-local, cloud metadata, ...) are refused unless
//! the administrator names the host in `allowed_hosts`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imagestore_proto::internal::v1 as ipb;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::FetchError;

/// `[import_filtering]` in the configuration file; Glance's names and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportFiltering {
    pub allowed_schemes: Vec<String>,
    pub disallowed_schemes: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub disallowed_hosts: Vec<String>,
    pub allowed_ports: Vec<u16>,
    pub disallowed_ports: Vec<u16>,
}

impl Default for ImportFiltering {
    fn default() -> Self {
        Self {
            allowed_schemes: vec!["http".into(), "https".into()],
            disallowed_schemes: Vec::new(),
            allowed_hosts: Vec::new(),
            disallowed_hosts: Vec::new(),
            allowed_ports: vec![80, 443],
            disallowed_ports: Vec::new(),
        }
    }
}

fn refused(url: &Url, why: String) -> FetchError {
    FetchError::Refused(format!(
        "{} is refused by this server's import filtering: {why}",
        redact(url)
    ))
}

/// The URL without user info or query, for messages and logs.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Why an address is not fetched from unless its host is allowed by name.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => special_v4(v4),
            None => special_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 one carries, where packets to it reach that IPv4
/// address: IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96, but not :: and
/// ::1 themselves), NAT64 (64:ff9b::/96, RFC 6052; 64:ff9b:1::/48, RFC 8215,
/// last 32 bits) and 6to4 (2002::/16, the next 32 bits).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    match s {
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, _, _, _, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_private() {
        Some("a private address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("an unspecified address")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("a private (unique local) address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

impl ImportFiltering {
    /// Checks a URL's scheme, host and port, before any connection (and again
    /// on every redirect). A host written as an address is checked as one here; a
    /// name is checked once resolved ([`ImportFiltering::check_ip`]).
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        let scheme = url.scheme();
        if (!self.allowed_schemes.is_empty() && !self.allowed_schemes.iter().any(|s| s == scheme))
            || self.disallowed_schemes.iter().any(|s| s == scheme)
        {
            return Err(refused(
                url,
                format!("the scheme {scheme:?} is not allowed"),
            ));
        }
        let host = match url.host() {
            Some(h) => h,
            None => return Err(refused(url, "it names no host".into())),
        };
        let name = host_name(&host);
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused(url, "credentials in URLs are not accepted".into()));
        }
        if (!self.allowed_hosts.is_empty() && !self.host_allowed(&name))
            || self.disallowed_hosts.iter().any(|h| same_host(h, &name))
        {
            return Err(refused(url, format!("the host {name} is not allowed")));
        }
        let Some(port) = url.port_or_known_default() else {
            return Err(refused(url, "it names no port".into()));
        };
        if (!self.allowed_ports.is_empty() && !self.allowed_ports.contains(&port))
            || self.disallowed_ports.contains(&port)
        {
            return Err(refused(url, format!("the port {port} is not allowed")));
        }
        let literal = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            self.check_ip(&name, ip).map_err(|why| refused(url, why))?;
        }
        Ok(())
    }

    /// Checks an address `host` resolved to (or is); the reason when refused.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        let Some(kind) = special(ip) else {
            return Ok(());
        };
        if self.host_allowed(host) || self.host_allowed(&ip.to_string()) {
            return Ok(());
        }
        Err(format!(
            "{host} is {kind} ({ip}); an administrator can allow it by naming it in \
             import_filtering.allowed_hosts"
        ))
    }

    fn host_allowed(&self, name: &str) -> bool {
        self.allowed_hosts.iter().any(|h| same_host(h, name))
    }

    /// The policy as blob nodes receive it with each import.
    pub fn to_policy(&self) -> ipb::ImportPolicy {
        ipb::ImportPolicy {
            allowed_schemes: self.allowed_schemes.clone(),
            disallowed_schemes: self.disallowed_schemes.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            disallowed_hosts: self.disallowed_hosts.clone(),
            allowed_ports: self.allowed_ports.iter().map(|&p| u32::from(p)).collect(),
            disallowed_ports: self
                .disallowed_ports
                .iter()
                .map(|&p| u32::from(p))
                .collect(),
            ..Default::default()
        }
    }

    /// The filtering a policy carries. Ports out of range are dropped from the
    /// allowed list (and so allow nothing more).
    pub fn from_policy(p: &ipb::ImportPolicy) -> Self {
        let ports = |v: &[u32]| v.iter().filter_map(|&p| u16::try_from(p).ok()).collect();
        Self {
            allowed_schemes: p.allowed_schemes.clone(),
            disallowed_schemes: p.disallowed_schemes.clone(),
            allowed_hosts: p.allowed_hosts.clone(),
            disallowed_hosts: p.disallowed_hosts.clone(),
            allowed_ports: ports(&p.allowed_ports),
            disallowed_ports: ports(&p.disallowed_ports),
        }
    }
}

/// A host as written in lists: names without a trailing dot, lowercase; IPv6
/// without brackets.
fn host_name(host: &url::Host<&str>) -> String {
    match host {
        url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(v4) => v4.to_string(),
        url::Host::Ipv6(v6) => v6.to_string(),
    }
}

fn same_host(listed: &str, name: &str) -> bool {
    let listed = listed
        .trim_matches(|c| c == '[' || c == ']')
        .trim_end_matches('.');
    match (listed.parse::<IpAddr>(), name.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => listed.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: &ImportFiltering, u: &str) -> Result<(), FetchError> {
        f.check_url(&Url::parse(u).unwrap())
    }

    #[test]
    fn defaults_are_glances_and_refuse_internal_addresses() {
        let f = ImportFiltering::default();
        assert!(check(&f, "https://images.example.net/x").is_ok());
        assert!(check(&f, "http://203.0.113.9/x").is_ok());
        for bad in [
            "ftp://images.example.net/x",
            "file:///etc/passwd",
            "https://images.example.net:8443/x",
            "http://127.0.0.1/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://[fe80::1]/x",
            "http://[fd00:ec2::254]/x",
            "http://0.0.0.0/x",
            "http://user:pw@images.example.net/x",
        ] {
            let e = check(&f, bad).expect_err(bad).to_string();
            assert!(e.contains("import filtering"), "{bad}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn ipv6_forms_that_carry_an_ipv4_address_are_judged_by_it() {
        let f = ImportFiltering::default();
        for refused in [
            "http://[64:ff9b::a9fe:a9fe]/x",
            "http://[64:ff9b:1::a9fe:a9fe]/x",
            "http://[2002:a9fe:a9fe::]/x",
            "http://[2002:7f00:1::1]/x",
            "http://[::a9fe:a9fe]/x",
            "http://[::ffff:10.0.0.1]/x",
            "http://[::7f00:1]/x",
        ] {
            let e = check(&f, refused).expect_err(refused);
            assert!(e.to_string().contains("address"), "{refused}: {e}");
        }
        assert!(
            check(&f, "http://[64:ff9b::a9fe:a9fe]/x")
                .unwrap_err()
                .to_string()
                .contains("cloud metadata")
        );
        // What they carry when it is public is public.
        for allowed in ["http://[64:ff9b::808:808]/x", "http://[2002:808:808::1]/x"] {
            check(&f, allowed).expect(allowed);
        }
    }

    #[test]
    fn an_admin_allows_loopback_by_name_and_port() {
        let f = ImportFiltering {
            allowed_hosts: vec!["127.0.0.1".into()],
            allowed_ports: vec![8080],
            ..Default::default()
        };
        assert!(check(&f, "http://127.0.0.1:8080/x").is_ok());
        assert!(check(&f, "http://127.0.0.1:8081/x").is_err());
        assert!(
            check(&f, "http://127.0.0.2:8080/x").is_err(),
            "only listed hosts"
        );
        assert!(check(&f, "http://169.254.169.254:8080/x").is_err());
        assert!(
            f.check_ip("localhost", "127.0.0.1".parse().unwrap())
                .is_ok()
        );
        assert!(
            f.check_ip("evil.example", "10.0.0.1".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn disallowed_lists_apply_when_allowed_ones_are_empty() {
        let f = ImportFiltering {
            allowed_schemes: vec![],
            disallowed_schemes: vec!["http".into()],
            allowed_ports: vec![],
            disallowed_ports: vec![22],
            disallowed_hosts: vec!["bad.example".into()],
            ..Default::default()
        };
        assert!(check(&f, "https://ok.example:8443/").is_ok());
        assert!(check(&f, "http://ok.example/").is_err());
        assert!(check(&f, "https://ok.example:22/").is_err());
        assert!(check(&f, "https://BAD.example./").is_err());
    }
}
