//! IPv4 subnets and host address allocation (pure: no kernel).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An IPv4 network: address with all host bits zero, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Subnet {
    /// Prefixes /8 to /30: a /31 or /32 has no room for a gateway and a workload,
    /// and anything wider than /8 is not a tenant network.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Subnet> {
        let text = format!("{addr}/{prefix}");
        if !(8..=30).contains(&prefix) {
            return Err(Error::InvalidSubnet {
                subnet: text,
                reason: "prefix length must be 8..=30",
            });
        }
        let s = Ipv4Subnet { addr, prefix };
        if u32::from(addr) & !s.mask() != 0 {
            return Err(Error::InvalidSubnet {
                subnet: text,
                reason: "host bits are set (give the network address)",
            });
        }
        Ok(s)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Number of usable host addresses (network and broadcast excluded).
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The `n`-th address counting from the network address (0 = network).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        (n < (1u32 << (32 - self.prefix))).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }

    /// Refuse an address that cannot be given to a host of this subnet.
    pub fn check_host(&self, ip: Ipv4Addr) -> Result<()> {
        if !self.contains(ip) {
            return Err(Error::AddressOutOfSubnet {
                addr: ip,
                subnet: *self,
            });
        }
        if ip == self.addr {
            return Err(Error::AddressReserved {
                addr: ip,
                subnet: *self,
                what: "network address",
            });
        }
        if ip == self.broadcast() {
            return Err(Error::AddressReserved {
                addr: ip,
                subnet: *self,
                what: "broadcast address",
            });
        }
        Ok(())
    }

    /// The lowest host address not in `taken` (the gateway belongs in `taken`).
    pub fn allocate(&self, taken: &[Ipv4Addr]) -> Result<Ipv4Addr> {
        (1..=self.hosts())
            .filter_map(|n| self.nth(n))
            .find(|ip| !taken.contains(ip))
            .ok_or(Error::ExhaustedSubnet {
                subnet: *self,
                in_use: taken.iter().filter(|ip| self.contains(**ip)).count(),
            })
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = Error;

    fn from_str(s: &str) -> Result<Ipv4Subnet> {
        let bad = |reason| Error::InvalidSubnet {
            subnet: s.to_string(),
            reason,
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDR/PREFIX"))?;
        let addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix = p.parse().map_err(|_| bad("not a prefix length"))?;
        Ipv4Subnet::new(addr, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_refuse() {
        let s: Ipv4Subnet = "10.1.0.0/24".parse().unwrap();
        assert_eq!(s.broadcast(), ip("10.1.0.255"));
        assert_eq!(s.hosts(), 254);
        assert!(matches!(
            "10.1.0.1/24".parse::<Ipv4Subnet>(),
            Err(Error::InvalidSubnet { reason, .. }) if reason.contains("host bits")
        ));
        assert!(matches!(
            "10.0.0.0/31".parse::<Ipv4Subnet>(),
            Err(Error::InvalidSubnet { .. })
        ));
        assert!(matches!(
            "10.0.0.0".parse::<Ipv4Subnet>(),
            Err(Error::InvalidSubnet { .. })
        ));
        assert!(matches!(
            s.check_host(ip("10.2.0.1")),
            Err(Error::AddressOutOfSubnet { .. })
        ));
        assert!(matches!(
            s.check_host(ip("10.1.0.0")),
            Err(Error::AddressReserved {
                what: "network address",
                ..
            })
        ));
        assert!(matches!(
            s.check_host(ip("10.1.0.255")),
            Err(Error::AddressReserved {
                what: "broadcast address",
                ..
            })
        ));
        s.check_host(ip("10.1.0.9")).unwrap();
    }

    #[test]
    fn allocation_skips_taken_and_exhausts() {
        let s: Ipv4Subnet = "192.168.7.0/30".parse().unwrap();
        assert_eq!(s.allocate(&[ip("192.168.7.1")]).unwrap(), ip("192.168.7.2"));
        let err = s
            .allocate(&[ip("192.168.7.1"), ip("192.168.7.2")])
            .unwrap_err();
        assert!(
            matches!(err, Error::ExhaustedSubnet { in_use: 2, .. }),
            "{err}"
        );
    }
}
