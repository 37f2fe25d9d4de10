//! Naming rules. Names in shared places carry our prefix so `list` can find them
//! (and so tests never see objects they did not create); names inside a tenant
//! namespace are fixed, because the namespace itself is ours.

use crate::error::{Error, Result};

/// IFNAMSIZ is 16 including the NUL.
pub const IFNAME_MAX: usize = 15;

/// Inside a tenant namespace: the bridge and the tenant end of the transit veth.
pub const BRIDGE: &str = "br0";
pub const TRANSIT: &str = "pub0";
/// The tenant network's WireGuard link (issue #16), inside the tenant namespace.
pub const WG_IF: &str = "wg0";
/// The workload's interface inside its own namespace.
pub const WORKLOAD_IF: &str = "eth0";
/// nft table inside a tenant namespace.
pub const TENANT_TABLE: &str = "zos";

/// A kernel interface name: 1..=15 bytes of `[A-Za-z0-9_.-]`.
pub fn ifname(name: &str) -> Result<()> {
    if name.len() > IFNAME_MAX {
        return Err(Error::NameTooLong {
            name: name.into(),
            len: name.len(),
        });
    }
    charset(name, "interface names are [A-Za-z0-9_.-]")
}

fn charset(name: &str, reason: &'static str) -> Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(Error::InvalidName {
            name: name.into(),
            reason,
        });
    }
    Ok(())
}

/// Network and workload ids are `[a-z0-9]+`: no `-`, so `<prefix><net>-<wl>` parses
/// back unambiguously, and no `_` or `.` so the nft table name stays an identifier.
fn id(name: &str, what: &'static str) -> Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: what,
        });
    }
    Ok(())
}

pub fn check_net_id(net: &str) -> Result<()> {
    id(net, "network ids are [a-z0-9]+")
}

pub fn check_workload_id(wl: &str) -> Result<()> {
    id(wl, "workload ids are [a-z0-9]+")?;
    ifname(&port(wl))
}

/// The bridge port of a veth workload, in the tenant namespace.
pub fn port(wl: &str) -> String {
    format!("w-{wl}")
}

/// Names a tap may not take in the tenant namespace.
pub fn check_tap(name: &str) -> Result<()> {
    ifname(name)?;
    if [BRIDGE, TRANSIT, WG_IF, "lo"].contains(&name) || name.starts_with("w-") {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "reserved in the tenant namespace (br0, pub0, wg0, lo, w-*)",
        });
    }
    Ok(())
}

/// The nft table name for `prefix` + `rest`: nft identifiers cannot hold `-`.
pub fn nft_table(prefix: &str, rest: &str) -> String {
    format!("{prefix}{rest}").replace('-', "_")
}

/// A workload namespace name must be ours and distinguishable from tenant namespaces.
pub fn check_workload_netns(prefix: &str, name: &str) -> Result<()> {
    charset(name, "namespace names are [A-Za-z0-9_.-]")?;
    if name.len() > 64 {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "namespace names are at most 64 bytes",
        });
    }
    match name.strip_prefix(prefix) {
        Some(rest) if rest.contains('-') => Ok(()),
        _ => Err(Error::ForeignName {
            name: name.into(),
            prefix: prefix.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals() {
        assert!(matches!(
            ifname("a-very-long-name"),
            Err(Error::NameTooLong { len: 16, .. })
        ));
        ifname("exactly-15-byte").unwrap();
        assert!(matches!(ifname("bad name"), Err(Error::InvalidName { .. })));
        assert!(matches!(check_net_id("Ab"), Err(Error::InvalidName { .. })));
        assert!(matches!(
            check_net_id("a-b"),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            check_workload_id("abcdefghijklmn"),
            Err(Error::NameTooLong { .. })
        ));
        check_workload_id("abcdefghijklm").unwrap();
        assert!(matches!(check_tap("br0"), Err(Error::InvalidName { .. })));
        assert!(matches!(check_tap("w-x"), Err(Error::InvalidName { .. })));
        assert!(matches!(check_tap("wg0"), Err(Error::InvalidName { .. })));
        check_tap("tap-vm1").unwrap();
        assert!(matches!(
            check_workload_netns("n-", "other-a"),
            Err(Error::ForeignName { .. })
        ));
        assert!(matches!(
            check_workload_netns("n-", "n-tenant"),
            Err(Error::ForeignName { .. })
        ));
        check_workload_netns("n-", "n-tenant-web").unwrap();
        assert_eq!(nft_table("zt-ab12-", "t1"), "zt_ab12_t1");
    }
}
