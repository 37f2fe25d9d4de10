//! A release version: `MAJOR.MINOR.PATCH` (semver's core, nothing else).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `MAJOR.MINOR.PATCH`, ordered numerically. One spelling per version: decimal without
/// leading zeros, no pre-release or build suffix (a node's agent is released, never
/// "almost" released), so a signed version string cannot vary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible changes.
    pub major: u64,
    /// Compatible additions.
    pub minor: u64,
    /// Fixes.
    pub patch: u64,
}

/// A version string that is not `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version MAJOR.MINOR.PATCH (decimal, no leading zeros, no suffix)")]
pub struct VersionError(pub String);

impl Version {
    /// The version `major.minor.patch`.
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, VersionError> {
        let bad = || VersionError(s.chars().take(64).collect());
        let mut it = s.split('.');
        let mut next = || -> Result<u64, VersionError> {
            let p = it.next().ok_or_else(bad)?;
            let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            if !digits || (p.len() > 1 && p.starts_with('0')) || p.len() > 15 {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = Version::new(next()?, next()?, next()?);
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_orders_and_prints_one_spelling() {
        let v: Version = "0.10.2".parse().unwrap();
        assert_eq!(v, Version::new(0, 10, 2));
        assert_eq!(v.to_string(), "0.10.2");
        assert!(Version::new(0, 2, 0) > Version::new(0, 1, 99));
        assert!(Version::new(1, 0, 0) > Version::new(0, 99, 99));
        assert_eq!(
            serde_json::to_value(v).unwrap(),
            serde_json::json!("0.10.2")
        );
    }

    #[test]
    fn refuses_every_other_spelling() {
        for s in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "1.2.3-rc1",
            "1.2.3+b",
            "v1.2.3",
            " 1.2.3",
            "1..3",
            "-1.2.3",
            "1.2.x",
            "1.2.9999999999999999",
        ] {
            assert!(s.parse::<Version>().is_err(), "{s:?} accepted");
        }
        assert!("0.0.0".parse::<Version>().is_ok());
    }
}
