//! A contract's tenant networks across nodes as one node sees them: the status record's
//! `mesh` section ([`MeshReport`], docs/network.md "Mesh"), in plain text for
//! `zos contract status` (docs/status.md).
//!
//! ```text
//! mesh      backend  range 10.20.0.0/16
//!   this node  slot 0  10.20.0.0/24  port 51820
//!   slot 1  10.20.1.0/24  node 3f2a9c1d...  peer  endpoint 192.0.2.2:51820  handshake 12 s ago  rx 1.5 KiB  tx 2.0 KiB
//!   slot 2  10.20.2.0/24  node -  not_placed
//!     cause: replica 2 is not placed on any node
//! ```
//!
//! The report is signed by the node, but what it says came partly from elsewhere (peer
//! records, causes): every field is made printable, as on the console screen.

pub use zos_engine::{MeshPeerReport, MeshReport};

use crate::render::{bytes, printable, utc};

/// Hex characters of a node key shown (then `...`): enough to tell a farm's nodes apart.
const SHORT_KEY: usize = 8;

/// The mesh section's lines (no newlines), `now` in unix seconds (for "12 s ago").
/// Empty when the report has no mesh: a contract without one prints as before.
pub fn lines(mesh: &[MeshReport], now: u64) -> Vec<String> {
    let mut out = Vec::new();
    for m in mesh {
        out.push(format!(
            "mesh      {}  range {}",
            printable(&m.network),
            printable(&m.range)
        ));
        let port = m
            .listen_port
            .map_or("port - (no link yet)".to_string(), |p| format!("port {p}"));
        out.push(format!(
            "  this node  slot {}  {}  {port}",
            m.slot,
            printable(&m.subnet)
        ));
        if let Some(key) = &m.public_key {
            out.push(format!("  this node  key {}", printable(key)));
        }
        if m.peers.is_empty() {
            out.push("  (no other slot)".into());
        }
        for p in &m.peers {
            out.push(peer_line(p, now));
            if let Some(cause) = &p.cause {
                out.push(format!("    cause: {}", printable(cause)));
            }
        }
    }
    out
}

/// [`lines`], each ending with a newline.
pub fn render(mesh: &[MeshReport], now: u64) -> String {
    lines(mesh, now)
        .into_iter()
        .map(|l| l + "\n")
        .collect::<String>()
}

fn peer_line(p: &MeshPeerReport, now: u64) -> String {
    let node = p.node.as_deref().map_or("-".to_string(), short_key);
    let mut state = printable(&p.state);
    if let Some(code) = &p.refusal {
        state = format!("{state} ({})", printable(code));
    }
    let mut line = format!(
        "  slot {}  {}  node {node}  {state}",
        p.slot,
        printable(&p.subnet)
    );
    // A working peer always shows its link; another slot only what it has.
    let has_link =
        p.endpoint.is_some() || p.last_handshake.is_some() || p.rx_bytes > 0 || p.tx_bytes > 0;
    if p.state == "peer" || has_link {
        let endpoint = p.endpoint.as_deref().map_or("-".to_string(), printable);
        let handshake = p
            .last_handshake
            .map_or("never".to_string(), |t| ago(t, now));
        line.push_str(&format!(
            "  endpoint {endpoint}  handshake {handshake}  rx {}  tx {}",
            bytes(p.rx_bytes),
            bytes(p.tx_bytes)
        ));
    }
    line
}

/// A node key cut to its first hex characters (`3f2a9c1d...`); short ones as they are.
pub fn short_key(key: &str) -> String {
    let key = printable(key);
    if key.chars().count() <= SHORT_KEY + 3 {
        return key;
    }
    let mut short: String = key.chars().take(SHORT_KEY).collect();
    short.push_str("...");
    short
}

/// `12 s ago`, `5 min ago`, `3 h ago`; older (or from a clock ahead of ours): the UTC
/// time.
pub fn ago(then: u64, now: u64) -> String {
    let Some(age) = now.checked_sub(then) else {
        return utc(then);
    };
    match age {
        0..120 => format!("{age} s ago"),
        120..7200 => format!("{} min ago", age / 60),
        7200..172_800 => format!("{} h ago", age / 3600),
        _ => utc(then),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_449_061;
    const NODE_B: &str = "3f2a9c1d7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
    const NODE_C: &str = "c0ffee007409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";

    fn peer(slot: u64, state: &str) -> MeshPeerReport {
        MeshPeerReport {
            slot,
            subnet: format!("10.20.{slot}.0/24"),
            node: None,
            state: state.into(),
            refusal: None,
            endpoint: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            cause: None,
        }
    }

    pub(crate) fn sample() -> Vec<MeshReport> {
        vec![MeshReport {
            network: "backend".into(),
            range: "10.20.0.0/16".into(),
            slot: 0,
            subnet: "10.20.0.0/24".into(),
            listen_port: Some(51820),
            public_key: Some("mVv7PDQc2oMWCUmnuOPF39wAw1yHU0wUy6hTyJS4VHw=".into()),
            peers: vec![
                MeshPeerReport {
                    node: Some(NODE_B.into()),
                    endpoint: Some("192.0.2.2:51820".into()),
                    last_handshake: Some(NOW - 12),
                    rx_bytes: 1536,
                    tx_bytes: 2048,
                    ..peer(1, "peer")
                },
                MeshPeerReport {
                    cause: Some("replica 2 is not placed on any node".into()),
                    ..peer(2, "not_placed")
                },
                MeshPeerReport {
                    node: Some(NODE_C.into()),
                    refusal: Some("stale_epoch".into()),
                    cause: Some("its record is for epoch 1; the assignment is at 2".into()),
                    ..peer(3, "refused")
                },
                MeshPeerReport {
                    node: Some(NODE_C.into()),
                    endpoint: Some("[2001:db8::3]:51820".into()),
                    cause: Some(
                        "no handshake yet: is UDP 51820 on 2001:db8::3 reachable?\x1b[2J".into(),
                    ),
                    ..peer(4, "peer")
                },
            ],
        }]
    }

    #[test]
    fn golden_mesh_section() {
        let want = "\
mesh      backend  range 10.20.0.0/16
  this node  slot 0  10.20.0.0/24  port 51820
  this node  key mVv7PDQc2oMWCUmnuOPF39wAw1yHU0wUy6hTyJS4VHw=
  slot 1  10.20.1.0/24  node 3f2a9c1d...  peer  endpoint 192.0.2.2:51820  handshake 12 s ago  rx 1.5 KiB  tx 2.0 KiB
  slot 2  10.20.2.0/24  node -  not_placed
    cause: replica 2 is not placed on any node
  slot 3  10.20.3.0/24  node c0ffee00...  refused (stale_epoch)
    cause: its record is for epoch 1; the assignment is at 2
  slot 4  10.20.4.0/24  node c0ffee00...  peer  endpoint [2001:db8::3]:51820  handshake never  rx 0 B  tx 0 B
    cause: no handshake yet: is UDP 51820 on 2001:db8::3 reachable??[2J
";
        let got = render(&sample(), NOW);
        assert_eq!(got, want, "got:\n{got}");
    }

    #[test]
    fn no_mesh_prints_nothing_and_a_new_link_says_so() {
        assert_eq!(render(&[], NOW), "");
        let mut m = sample();
        m[0].listen_port = None;
        m[0].public_key = None;
        m[0].peers.clear();
        assert_eq!(
            lines(&m, NOW),
            [
                "mesh      backend  range 10.20.0.0/16",
                "  this node  slot 0  10.20.0.0/24  port - (no link yet)",
                "  (no other slot)",
            ]
        );
    }

    #[test]
    fn handshake_ages_and_short_keys() {
        assert_eq!(ago(NOW, NOW), "0 s ago");
        assert_eq!(ago(NOW - 119, NOW), "119 s ago");
        assert_eq!(ago(NOW - 120, NOW), "2 min ago");
        assert_eq!(ago(NOW - 7199, NOW), "119 min ago");
        assert_eq!(ago(NOW - 7200, NOW), "2 h ago");
        assert_eq!(ago(NOW - 172_800, NOW), utc(NOW - 172_800));
        // A handshake stamped ahead of our clock: its time, not a negative age.
        assert_eq!(ago(NOW + 5, NOW), "2026-11-23 15:51:06Z");
        assert_eq!(short_key(NODE_B), "3f2a9c1d...");
        assert_eq!(short_key("abc"), "abc");
        assert_eq!(short_key("ab\x1bc"), "ab?c");
    }
}
