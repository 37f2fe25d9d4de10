//! nftables: the rulesets we install (rendered as text, unit-tested) and the `nft`
//! binary that applies them. `nft` runs in the namespace of the calling thread
//! (a child inherits it), is fed the script on stdin (`nft -f -`) and is never run
//! through a shell. Each script replaces a whole table in one transaction: `table X
//! {}` creates it if missing, `delete table X` empties it, and the new body follows,
//! so applying twice is a no-op and a crash never leaves half a table.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::model::PortForward;
use crate::names::{BRIDGE, TRANSIT, WG_IF};
use crate::subnet::{disjoint, IpNet, Ipv4Subnet};

/// The comment on the rules that drop a tenant's new connections to denied
/// destinations (tests and operators find their counters by it).
pub const EGRESS_DENY_COMMENT: &str = "zos egress deny";

/// The host table's set of UDP ports the node's input accepts: the listen ports of
/// the tenant networks' WireGuard links, and nothing else.
pub const WIREGUARD_SET: &str = "wireguard";

/// An anonymous nft set of the IPv4 prefixes of `nets` (overlaps merged), if any.
fn v4_set(nets: &[IpNet]) -> Option<String> {
    let v4: Vec<IpNet> = nets.iter().filter(|n| n.is_ipv4()).copied().collect();
    let v4 = disjoint(&v4);
    if v4.is_empty() {
        return None;
    }
    let items: Vec<String> = v4.iter().map(IpNet::to_string).collect();
    Some(format!("{{ {} }}", items.join(", ")))
}

/// Egress rules after `matcher` (which selects a tenant's new outgoing packets):
/// allowed destinations accepted, then denied ones counted and dropped. `accept_extra`
/// goes between the matcher and the allow set (a source check).
fn egress_lines(matcher: &str, accept_extra: &str, deny: &[IpNet], allow: &[IpNet]) -> String {
    let mut out = String::new();
    let denied = v4_set(deny);
    if let (Some(allow), Some(_)) = (v4_set(allow), &denied) {
        out.push_str(&format!(
            "\t\t{matcher} {accept_extra}ip daddr {allow} accept\n"
        ));
    }
    if let Some(deny) = denied {
        out.push_str(&format!(
            "\t\t{matcher} ip daddr {deny} counter drop comment \"{EGRESS_DENY_COMMENT}\"\n"
        ));
    }
    out
}

/// The node's own firewall (`inet <prefix>host` in the node namespace). Its input
/// accepts UDP to the ports of the [`WIREGUARD_SET`] set (empty when made; filled by
/// [`set_ports_script`]).
pub fn host_table(table: &str, tenant_glob: &str, uplink: &str, transit: Ipv4Subnet) -> String {
    format!(
        r#"table inet {table} {{
	set {WIREGUARD_SET} {{
		type inet_service
	}}
	chain input {{
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
		icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} accept
		udp dport @{WIREGUARD_SET} accept
	}}
	chain prerouting {{
		type filter hook prerouting priority raw; policy accept;
		iifname "{tenant_glob}" fib saddr . iif oif missing drop
	}}
	chain forward {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "{tenant_glob}" oifname "{uplink}" ip saddr {transit} accept
		iifname "{uplink}" oifname "{tenant_glob}" ct status dnat accept
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname "{uplink}" ip saddr {transit} masquerade
	}}
}}
"#
    )
}

/// Per tenant, in the node namespace (`ip <prefix><net>`): opened ports go from the
/// uplink to the tenant end of the transit veth; new connections from the tenant (its
/// transit link `link`) to a denied destination are dropped unless allowed (the same
/// rule as in the tenant namespace: two walls).
#[allow(clippy::too_many_arguments)]
pub fn node_tenant_table(
    table: &str,
    uplink: &str,
    link: &str,
    tenant_transit: Ipv4Addr,
    ports: &[PortForward],
    deny: &[IpNet],
    allow: &[IpNet],
) -> String {
    let mut rules = String::new();
    for p in ports {
        rules.push_str(&format!(
            "\t\tiifname \"{uplink}\" {} dport {} dnat to {tenant_transit}\n",
            p.proto.as_str(),
            p.public_port
        ));
    }
    let egress = egress_lines(&format!("iifname \"{link}\""), "", deny, allow);
    format!(
        "table ip {table} {{\n\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{rules}\t}}\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"{link}\" ct state established,related accept\n{egress}\t}}\n}}\n"
    )
}

/// Inside the tenant namespace (`inet zos`). New connections of workloads leave for
/// the internet only: destinations in `deny` are dropped (and counted) unless in
/// `allow`. IPv6 is not forwarded at all. Between the bridge and the WireGuard link
/// `wg0` (when the network spans nodes): this slot's addresses go out (a forged
/// source does not), and what comes in goes to the bridge (whose only route is this
/// slot; `wg0` itself only lets in its peers' allowed IPs); never masqueraded, the
/// peers see real addresses.
pub fn tenant_table(
    table: &str,
    subnet: Ipv4Subnet,
    ports: &[PortForward],
    deny: &[IpNet],
    allow: &[IpNet],
) -> String {
    let egress = egress_lines(
        &format!("iifname \"{BRIDGE}\" oifname \"{TRANSIT}\""),
        &format!("ip saddr {subnet} "),
        deny,
        allow,
    );
    let mut dnat = String::new();
    for p in ports {
        dnat.push_str(&format!(
            "\t\tiifname \"{TRANSIT}\" {} dport {} dnat ip to {}:{}\n",
            p.proto.as_str(),
            p.public_port,
            p.workload_ip,
            p.port
        ));
    }
    format!(
        r#"table inet {table} {{
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
{dnat}	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname "{TRANSIT}" ip saddr {subnet} masquerade
	}}
	chain input {{
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
		iifname "{BRIDGE}" icmp type echo-request accept
	}}
	chain forward {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "{BRIDGE}" oifname "{BRIDGE}" accept
{egress}		iifname "{BRIDGE}" oifname "{TRANSIT}" ip saddr {subnet} accept
		iifname "{TRANSIT}" oifname "{BRIDGE}" ct status dnat accept
		iifname "{BRIDGE}" oifname "{WG_IF}" ip saddr {subnet} accept
		iifname "{WG_IF}" oifname "{BRIDGE}" accept
	}}
}}
"#
    )
}

/// Wrap a table body so that applying it replaces the table atomically.
pub fn replace_script(family: &str, table: &str, body: &str) -> String {
    format!("table {family} {table} {{}}\ndelete table {family} {table}\n{body}")
}

/// Create a table that must not exist yet, with its body (one transaction; the
/// kernel refuses it whole, `File exists`, if the table is there). Why not always
/// [`replace_script`]: a transaction that deletes anything, even the empty table its
/// own first line made, leaves work for the kernel's nf_tables destroy worker, and
/// the `nft` process's exit then waits for it (an RCU grace period: ~10 ms of a
/// publish, measured). A new table has nothing to delete.
pub fn create_script(family: &str, table: &str, body: &str) -> String {
    format!("create table {family} {table}\n{body}")
}

/// Delete a table whether or not it exists (one transaction).
pub(crate) fn delete_script(family: &str, table: &str) -> String {
    format!("table {family} {table} {{}}\ndelete table {family} {table}\n")
}

/// Make set `set` of table `family table` exactly `ports` (one transaction).
pub fn set_ports_script(family: &str, table: &str, set: &str, ports: &[u16]) -> String {
    let mut s = format!("flush set {family} {table} {set}\n");
    if !ports.is_empty() {
        let items: Vec<String> = ports.iter().map(u16::to_string).collect();
        s.push_str(&format!(
            "add element {family} {table} {set} {{ {} }}\n",
            items.join(", ")
        ));
    }
    s
}

/// The ports of set `set` of table `family table` in the calling thread's namespace,
/// sorted; `None` when the table or the set does not exist.
pub fn set_ports(family: &str, table: &str, set: &str) -> Result<Option<Vec<u16>>> {
    let fail = |detail: String| Error::Nft {
        op: format!("list set {family} {table} {set}"),
        detail,
    };
    let out = Command::new("nft")
        .args(["-j", "list", "set", family, table, set])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("spawn nft: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(fail(err.trim().into()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("bad JSON: {e}")))?;
    Ok(Some(parse_set_ports(&v)))
}

/// The integer elements of the first set in `nft -j list set` output, sorted.
pub(crate) fn parse_set_ports(v: &serde_json::Value) -> Vec<u16> {
    let mut ports: Vec<u16> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("set"))
        .flat_map(|set| set["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// `nft -f -` with `script` on stdin, in the calling thread's namespace.
pub fn apply(op: &str, script: &str) -> Result<()> {
    let started = std::time::Instant::now();
    let fail = |detail: String| Error::Nft {
        op: op.into(),
        detail,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("spawn nft: {e} (apt-get install nftables)")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| fail(format!("write script: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("wait: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tracing::trace!(
        op,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "nft applied"
    );
    Ok(())
}

/// Deletes table `family table` in the calling thread's namespace; false when there was
/// none (nft's ENOENT). One `nft` run, instead of listing every table first: a node
/// namespace holds one table per tenant network, and listing them all on each removal
/// made removing N networks O(N^2).
pub fn delete_table(op: &str, family: &str, table: &str) -> Result<bool> {
    match apply(op, &format!("delete table {family} {table}\n")) {
        Ok(()) => Ok(true),
        Err(Error::Nft { detail, .. }) if detail.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

/// `(family, name)` of every table in the calling thread's namespace (`nft -j`).
pub fn tables() -> Result<Vec<(String, String)>> {
    let fail = |detail: String| Error::Nft {
        op: "list tables".into(),
        detail,
    };
    let out = Command::new("nft")
        .args(["-j", "list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("spawn nft: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().into()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("bad JSON: {e}")))?;
    let mut t = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(tab) = item.get("table") {
            if let (Some(f), Some(n)) = (tab["family"].as_str(), tab["name"].as_str()) {
                t.push((f.to_string(), n.to_string()));
            }
        }
    }
    Ok(t)
}

/// Ports forwarded by the `ip` tables of the calling thread's namespace:
/// `(table, proto, public port)`, read back with `nft -j list ruleset ip`.
pub(crate) fn forwarded_ports() -> Result<Vec<(String, String, u16)>> {
    let fail = |detail: String| Error::Nft {
        op: "list ruleset".into(),
        detail,
    };
    let out = Command::new("nft")
        .args(["-j", "list", "ruleset", "ip"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("spawn nft: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().into()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("bad JSON: {e}")))?;
    Ok(parse_forwarded_ports(&v))
}

/// The `dport` matches of rules that `dnat`, from `nft -j` output.
pub(crate) fn parse_forwarded_ports(v: &serde_json::Value) -> Vec<(String, String, u16)> {
    let mut found = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let exprs = rule["expr"].as_array().cloned().unwrap_or_default();
        if !exprs.iter().any(|e| e.get("dnat").is_some()) {
            continue;
        }
        for e in &exprs {
            let m = &e["match"];
            let payload = &m["left"]["payload"];
            if payload["field"] == "dport" {
                if let (Some(proto), Some(port)) =
                    (payload["protocol"].as_str(), m["right"].as_u64())
                {
                    if let (Some(table), Ok(port)) = (rule["table"].as_str(), u16::try_from(port)) {
                        found.push((table.to_string(), proto.to_string(), port));
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;

    #[test]
    fn rendering() {
        let ports = [PortForward {
            proto: Proto::Tcp,
            public_port: 8080,
            workload_ip: "10.1.0.2".parse().unwrap(),
            port: 80,
        }];
        let deny = crate::subnet::DEFAULT_EGRESS_DENY;
        let allow: Vec<IpNet> = vec!["192.168.77.0/24".parse().unwrap()];
        let t = tenant_table("zos", "10.1.0.0/24".parse().unwrap(), &ports, &deny, &[]);
        assert!(t.contains("iifname \"pub0\" tcp dport 8080 dnat ip to 10.1.0.2:80"));
        assert!(t.contains("oifname \"pub0\" ip saddr 10.1.0.0/24 masquerade"));
        assert!(t.contains(
            "iifname \"br0\" oifname \"pub0\" ip daddr { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, \
             127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/4, \
             240.0.0.0/4 } counter drop comment \"zos egress deny\""
        ));
        assert!(!t.contains("fe80"), "no IPv6 in an ip daddr set");
        let (d, a) = (
            t.find("counter drop").unwrap(),
            t.find("ip saddr 10.1.0.0/24 accept"),
        );
        assert!(d < a.unwrap(), "the deny comes before the general accept");
        let t = tenant_table("zos", "10.1.0.0/24".parse().unwrap(), &[], &deny, &allow);
        let a = t
            .find("ip saddr 10.1.0.0/24 ip daddr { 192.168.77.0/24 } accept")
            .unwrap();
        assert!(a < t.find("counter drop").unwrap(), "the allow comes first");
        // Nothing denied: no egress rules at all.
        let t = tenant_table("zos", "10.1.0.0/24".parse().unwrap(), &[], &[], &allow);
        assert!(!t.contains("daddr"));
        let n = node_tenant_table(
            "n_t1",
            "eth0",
            "n-t1",
            "100.127.0.2".parse().unwrap(),
            &ports,
            &deny,
            &allow,
        );
        assert!(n.contains("iifname \"eth0\" tcp dport 8080 dnat to 100.127.0.2"));
        assert!(n.contains("iifname \"n-t1\" ip daddr { 192.168.77.0/24 } accept"));
        assert!(n.contains("iifname \"n-t1\" ip daddr { 0.0.0.0/8, 10.0.0.0/8,"));
        let h = host_table("n_host", "n-*", "eth0", "100.127.0.0/16".parse().unwrap());
        assert!(h.contains("policy drop"));
        assert!(h.contains("iifname \"n-*\" oifname \"eth0\" ip saddr 100.127.0.0/16 accept"));
        assert!(h.contains("iifname \"n-*\" fib saddr . iif oif missing drop"));
        assert!(h.contains("udp dport @wireguard accept"));
        assert!(h.contains("set wireguard {\n\t\ttype inet_service\n\t}"));
        let t = tenant_table("zos", "10.1.0.0/24".parse().unwrap(), &[], &deny, &[]);
        assert!(t.contains("iifname \"br0\" oifname \"wg0\" ip saddr 10.1.0.0/24 accept"));
        assert!(t.contains("iifname \"wg0\" oifname \"br0\" accept"));
        assert!(
            !t.contains("oifname \"wg0\" ip saddr 10.1.0.0/24 masquerade"),
            "the peers see real addresses"
        );
        assert_eq!(
            set_ports_script("inet", "n_host", "wireguard", &[51820, 40000]),
            "flush set inet n_host wireguard\nadd element inet n_host wireguard { 51820, 40000 }\n"
        );
        assert_eq!(
            set_ports_script("inet", "n_host", "wireguard", &[]),
            "flush set inet n_host wireguard\n"
        );
        let s = replace_script("ip", "n_t1", &n);
        assert!(s.starts_with("table ip n_t1 {}\ndelete table ip n_t1\ntable ip n_t1 {"));
        let s = create_script("ip", "n_t1", &n);
        assert!(s.starts_with("create table ip n_t1\ntable ip n_t1 {"));
        assert!(
            !s.contains("delete"),
            "nothing deleted: no grace period at exit"
        );
    }

    #[test]
    fn set_ports_from_json() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "inet", "name": "wireguard", "table": "n_host",
              "type": "inet_service", "handle": 3, "elem": [51821, 40000]}}]}"#,
        )
        .unwrap();
        assert_eq!(parse_set_ports(&v), [40000, 51821]);
        let empty: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"set": {"family": "inet", "name": "wireguard",
              "table": "n_host", "type": "inet_service", "handle": 3}}]}"#,
        )
        .unwrap();
        assert_eq!(parse_set_ports(&empty), Vec::<u16>::new());
    }

    #[test]
    fn forwarded_ports_from_json() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "n_a", "handle": 1}},
            {"rule": {"family": "ip", "table": "n_a", "chain": "prerouting", "handle": 2, "expr": [
              {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "up0"}},
              {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
              {"dnat": {"addr": "100.127.0.2"}}]}},
            {"rule": {"family": "ip", "table": "n_a", "chain": "x", "handle": 3, "expr": [
              {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
              {"accept": null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            parse_forwarded_ports(&v),
            [("n_a".to_string(), "tcp".to_string(), 8080)]
        );
    }
}
