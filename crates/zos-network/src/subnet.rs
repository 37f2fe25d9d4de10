//! IPv4 subnets and host address allocation, and IP prefixes for egress rules (pure:
//! no kernel).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

    /// The network address (host bits zero).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length, 8 to 30.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The broadcast address (host bits all one); never handed to a workload.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is in the subnet (network and broadcast addresses included).
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

/// An IPv4 or IPv6 prefix of any length (`10.0.0.0/8`, `192.0.2.7/32`, `fe80::/10`):
/// a destination range in egress rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Refuses a prefix longer than the address or set host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IpNet> {
        let text = format!("{addr}/{prefix}");
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(Error::InvalidSubnet {
                subnet: text,
                reason: "prefix length longer than the address",
            });
        }
        let n = IpNet { addr, prefix };
        if n.value(addr) & !n.mask() != 0 {
            return Err(Error::InvalidSubnet {
                subnet: text,
                reason: "host bits are set (give the network address)",
            });
        }
        Ok(n)
    }

    /// `const` form for the built-in ranges (valid by construction, checked in tests).
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
        IpNet {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(first: u16, prefix: u8) -> IpNet {
        IpNet {
            addr: IpAddr::V6(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, 0)),
            prefix,
        }
    }

    /// The prefix's address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether it is an IPv4 prefix (tenant networks forward IPv4 only).
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn bits(&self, a: IpAddr) -> u8 {
        if a.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn value(&self, a: IpAddr) -> u128 {
        match a {
            IpAddr::V4(v) => u32::from(v) as u128,
            IpAddr::V6(v) => u128::from(v),
        }
    }

    fn mask(&self) -> u128 {
        let bits = self.bits(self.addr) as u32;
        let all = if bits == 32 {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        if self.prefix == 0 {
            0
        } else {
            (all << (bits - self.prefix as u32)) & all
        }
    }

    /// True when `ip` is in this prefix (an IPv4 prefix never holds an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.value(ip) & self.mask() == self.value(self.addr)
    }

    /// True when every address of `other` is in this prefix.
    pub fn covers(&self, other: &IpNet) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

/// What a tenant may not reach unless its contract opens it: private (RFC 1918),
/// shared (RFC 6598, which holds the node's transit range), loopback, link-local,
/// multicast, "this network", reserved and broadcast; IPv6 loopback, link-local,
/// unique-local and multicast.
pub const DEFAULT_EGRESS_DENY: [IpNet; 13] = [
    IpNet::v4(0, 0, 0, 0, 8),
    IpNet::v4(10, 0, 0, 0, 8),
    IpNet::v4(100, 64, 0, 0, 10),
    IpNet::v4(127, 0, 0, 0, 8),
    IpNet::v4(169, 254, 0, 0, 16),
    IpNet::v4(172, 16, 0, 0, 12),
    IpNet::v4(192, 168, 0, 0, 16),
    IpNet::v4(224, 0, 0, 0, 4),
    IpNet::v4(240, 0, 0, 0, 4),
    IpNet {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        prefix: 128,
    },
    IpNet::v6(0xfe80, 10),
    IpNet::v6(0xfc00, 7),
    IpNet::v6(0xff00, 8),
];

/// `nets` without the prefixes another one covers (nft refuses overlapping elements
/// in a set), in order.
pub fn disjoint(nets: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for n in nets {
        if out.iter().any(|o| o.covers(n)) {
            continue;
        }
        out.retain(|o| !n.covers(o));
        out.push(*n);
    }
    out
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = Error;

    /// `ADDR/PREFIX`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<IpNet> {
        let bad = |reason| Error::InvalidSubnet {
            subnet: s.to_string(),
            reason,
        };
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let prefix = match p {
            Some(p) => p.parse().map_err(|_| bad("not a prefix length"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_nets() {
        for n in DEFAULT_EGRESS_DENY {
            assert_eq!(IpNet::new(n.addr(), n.prefix()).unwrap(), n, "{n}");
            assert_eq!(n.to_string().parse::<IpNet>().unwrap(), n);
        }
        let lan: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(lan.contains("192.168.77.1".parse().unwrap()));
        assert!(!lan.contains("192.169.0.1".parse().unwrap()));
        assert!(!lan.contains("::ffff:192.168.0.1".parse().unwrap()));
        let ula: IpNet = "fc00::/7".parse().unwrap();
        assert!(ula.contains("fd12::1".parse().unwrap()));
        assert!(!ula.contains("fe80::1".parse().unwrap()));
        assert_eq!("198.51.100.7".parse::<IpNet>().unwrap().prefix(), 32);
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(matches!(
            "10.0.0.1/8".parse::<IpNet>(),
            Err(Error::InvalidSubnet { reason, .. }) if reason.contains("host bits")
        ));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("fe80::/129".parse::<IpNet>().is_err());
        let d = disjoint(&[
            "10.1.0.0/16".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
            "10.2.0.0/16".parse().unwrap(),
            "192.168.1.0/24".parse().unwrap(),
        ]);
        assert_eq!(
            d,
            [
                "10.0.0.0/8".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap()
            ]
        );
    }

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
