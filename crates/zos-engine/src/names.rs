//! Node-wide names of what a contract owns: `<contract id>.<resource name>`.
//!
//! Contract ids are `[a-z0-9-]` and resource names `[a-z][a-z0-9-]*` (both checked by
//! zos-contract), so the `.` separates them unambiguously and a name tells which
//! contract owns it. That is what lets the engine find its objects again after a crash
//! without any other record, and recognise orphans. Provisioners map these names to
//! kernel names as they need (an interface name has 15 bytes, for one).

/// The node-wide name of resource `name` of contract `contract`.
pub fn of(contract: &str, name: &str) -> String {
    format!("{contract}.{name}")
}

/// The contract that owns a node-wide name, if it is one.
pub fn owner(node_wide: &str) -> Option<&str> {
    node_wide
        .split_once('.')
        .map(|(contract, _)| contract)
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_round_trip_to_their_contract() {
        let n = super::of("crm-acme", "data");
        assert_eq!(n, "crm-acme.data");
        assert_eq!(super::owner(&n), Some("crm-acme"));
        assert_eq!(super::owner("no-dot"), None);
        assert_eq!(super::owner(".x"), None);
    }
}
