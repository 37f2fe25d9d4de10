//! `nodes/<node>/heartbeat`: a node's periodic "alive, and this is how I stand", signed
//! by the node key and replaced every period.
//!
//! ```json
//! {"contracts":{"failed":0,"provisioning":0,"running":1},
//!  "listening":[],"listening_total":0,
//!  "reserved":{"cpus":1,"hdd_bytes":0,"memory_bytes":67108864,"ssd_bytes":67108864},
//!  "time":1700000060,"uptime_secs":3600,
//!  "used":{"hdd_bytes":0,"memory_bytes":1073741824,"ssd_bytes":16384},"workloads":1}
//! ```
//!
//! `listening` is the node's own listening sockets (TCP in LISTEN, UDP bound and not
//! connected) as /proc/net shows them in the node's network namespace: the evidence for
//! "no login surface". It is expected to be empty, but for the UDP socket of each
//! tenant network that spans nodes (WireGuard's, docs/security.md), which the node lists
//! with `"label":"wireguard"`; any other is an alarm.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{KeyKind, NotaryKey, Record};

use crate::registration::NodeResources;
use crate::{check_int, parse_body, RegistryError};

/// Most sockets a heartbeat lists; `listening_total` still counts them all.
pub const MAX_SOCKETS: usize = 1024;

/// A socket's protocol, as the /proc/net file it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP over IPv4 (/proc/net/tcp).
    Tcp,
    /// TCP over IPv6 (/proc/net/tcp6).
    Tcp6,
    /// UDP over IPv4 (/proc/net/udp).
    Udp,
    /// UDP over IPv6 (/proc/net/udp6).
    Udp6,
}

impl Proto {
    /// Every protocol, in the order the files are read.
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Tcp6, Proto::Udp, Proto::Udp6];

    /// The file name under /proc/net.
    pub fn file(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp => "udp",
            Proto::Udp6 => "udp6",
        }
    }

    /// True for TCP over either IP version (a listener is then in state LISTEN).
    pub fn is_tcp(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Tcp6)
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file())
    }
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socket {
    /// The /proc/net file it was found in.
    pub proto: Proto,
    /// The local address it is bound to (unspecified: every address).
    pub address: IpAddr,
    /// The local port.
    pub port: u16,
    /// The owning uid and the socket inode: enough to find the process on the node.
    pub uid: u32,
    /// The socket's inode number (as in `/proc/<pid>/fd` links `socket:[inode]`).
    pub inode: u64,
    /// What the node says the socket is, when it is one the node means to have (absent:
    /// nothing; every such socket is an alarm). Absent in heartbeats of older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<SocketLabel>,
}

/// What a listening socket the node means to have is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketLabel {
    /// The UDP socket of a tenant network's WireGuard link (docs/security.md, "The one
    /// UDP socket"): the kernel's, held by no process; it answers only packets
    /// authenticated with a peer's key.
    Wireguard,
}

impl std::fmt::Display for SocketLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SocketLabel::Wireguard => "wireguard",
        })
    }
}

impl Socket {
    /// Labelled as a WireGuard link's socket.
    pub fn is_wireguard(&self) -> bool {
        self.label == Some(SocketLabel::Wireguard)
    }
}

/// Labels the WireGuard sockets among `sockets`: UDP, owned by uid 0, on one of `ports`
/// (the listen ports of this node's WireGuard links, `zos_network::Network::mesh_ports`)
/// and held by no process: the kernel's own socket. `held` is every socket inode some
/// process has open ([`crate::detect::held_socket_inodes`]). A process's socket on such a
/// port (bound beside the link's, on another address) is not passed off as WireGuard's:
/// it stays unlabelled, an alarm like any other.
pub fn label_wireguard(sockets: &mut [Socket], ports: &[u16], held: &BTreeSet<u64>) {
    for s in sockets {
        let kernel = s.uid == 0 && !held.contains(&s.inode);
        if !s.proto.is_tcp() && ports.contains(&s.port) && kernel {
            s.label = Some(SocketLabel::Wireguard);
        }
    }
}

/// What the node measures in use (whoever uses it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// MemTotal - MemAvailable.
    pub memory_bytes: u64,
    /// Bytes used on the SSD pools (statvfs).
    pub ssd_bytes: u64,
    /// Bytes used on the HDD pools (statvfs).
    pub hdd_bytes: u64,
    /// zosd's own resident memory: the agent, and PID 1 when zosd is the node's init
    /// (0 otherwise). Absent in heartbeats of older nodes.
    #[serde(default)]
    pub agent_rss_bytes: u64,
    /// PID 1's resident memory, in bytes, when zosd is the init (0 otherwise).
    #[serde(default)]
    pub init_rss_bytes: u64,
}

/// The contracts the node owns, by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractCounts {
    /// Being deployed.
    pub provisioning: u64,
    /// Deployed and running.
    pub running: u64,
    /// Failed to deploy or to keep running.
    pub failed: u64,
}

/// The body of a heartbeat record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Seconds since the machine booted (/proc/uptime).
    pub uptime_secs: u64,
    /// What the node's contracts reserve.
    pub reserved: NodeResources,
    /// What is measured in use.
    pub used: Usage,
    /// The owned contracts, by phase.
    pub contracts: ContractCounts,
    /// Workloads (containers, VMs) of the owned contracts.
    pub workloads: u64,
    /// The node's listening sockets, at most [`MAX_SOCKETS`], sorted.
    pub listening: Vec<Socket>,
    /// How many there are, listed or not (labelled ones included).
    pub listening_total: u64,
    /// Unix seconds when the heartbeat was taken.
    pub time: u64,
}

impl Heartbeat {
    /// Sets `listening` from everything found: sorted, at most [`MAX_SOCKETS`], and
    /// `listening_total` counts them all.
    pub fn set_listening(&mut self, mut sockets: Vec<Socket>) {
        sockets.sort();
        sockets.dedup();
        self.listening_total = sockets.len() as u64;
        sockets.truncate(MAX_SOCKETS);
        self.listening = sockets;
    }

    /// The listening sockets the node does not say it means to have: every one but
    /// the labelled (those not listed count as unexpected). A node should have none.
    pub fn unexpected_listening(&self) -> u64 {
        let labelled = self.listening.iter().filter(|s| s.label.is_some()).count();
        self.listening_total.saturating_sub(labelled as u64)
    }

    fn check(&self, key: &str) -> Result<(), RegistryError> {
        for (field, v) in [
            ("uptime_secs", self.uptime_secs),
            ("workloads", self.workloads),
            ("listening_total", self.listening_total),
            ("time", self.time),
            ("contracts.provisioning", self.contracts.provisioning),
            ("contracts.running", self.contracts.running),
            ("contracts.failed", self.contracts.failed),
            ("used.memory_bytes", self.used.memory_bytes),
            ("used.ssd_bytes", self.used.ssd_bytes),
            ("used.hdd_bytes", self.used.hdd_bytes),
            ("used.agent_rss_bytes", self.used.agent_rss_bytes),
            ("used.init_rss_bytes", self.used.init_rss_bytes),
        ] {
            check_int(key, field, v)?;
        }
        self.reserved.check(key)?;
        let invalid = |field, reason: String| RegistryError::Invalid {
            key: key.to_owned(),
            field,
            reason,
        };
        if self.listening.len() > MAX_SOCKETS {
            return Err(invalid(
                "listening",
                format!("lists {}; the limit is {MAX_SOCKETS}", self.listening.len()),
            ));
        }
        if (self.listening.len() as u64) > self.listening_total {
            return Err(invalid(
                "listening_total",
                format!(
                    "is {} but {} sockets are listed",
                    self.listening_total,
                    self.listening.len()
                ),
            ));
        }
        for s in &self.listening {
            check_int(key, "listening.inode", s.inode)?;
            // WireGuard speaks UDP only: a TCP listener called `wireguard` is a lie
            // that would hide an alarm.
            if s.is_wireguard() && s.proto.is_tcp() {
                return Err(invalid(
                    "listening.label",
                    format!("{} port {} is TCP, not a WireGuard socket", s.proto, s.port),
                ));
            }
        }
        Ok(())
    }

    /// Signs the heartbeat with the node key at `signed_at`.
    pub fn sign(&self, node: &SecretKey, signed_at: u64) -> Result<Record, RegistryError> {
        let key = NotaryKey::heartbeat(&node.public());
        self.check(key.as_str())?;
        let body = serde_json::to_value(self).expect("a heartbeat serializes");
        Ok(Record::sign_at(&key, body, node, signed_at)?)
    }

    /// The node and heartbeat a record holds: the envelope verifies (signed by the node
    /// it is about), the key is a heartbeat key, the body valid.
    pub fn from_record(record: &Record) -> Result<(PublicKey, Heartbeat), RegistryError> {
        record.verify()?;
        let KeyKind::Heartbeat { node } = record.notary_key()?.kind() else {
            return Err(RegistryError::WrongKind {
                key: record.key.clone(),
                expected: "heartbeat",
            });
        };
        let hb: Heartbeat = parse_body(&record.key, &record.body)?;
        hb.check(&record.key)?;
        Ok((node, hb))
    }

    /// Seconds between this heartbeat and `now` (0 when it is from the future: clocks
    /// differ).
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn empty() -> Heartbeat {
        Heartbeat {
            uptime_secs: 10,
            reserved: NodeResources::default(),
            used: Usage::default(),
            contracts: ContractCounts::default(),
            workloads: 0,
            listening: vec![],
            listening_total: 0,
            time: 100,
        }
    }

    fn socket(port: u16) -> Socket {
        Socket {
            proto: Proto::Tcp,
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
            uid: 0,
            inode: port as u64,
            label: None,
        }
    }

    #[test]
    fn a_heartbeat_signed_by_its_node_reads_back() {
        let node = sk(3);
        let mut hb = empty();
        hb.set_listening(vec![socket(22), socket(2)]);
        let record = hb.sign(&node, 100).unwrap();
        let (who, back) = Heartbeat::from_record(&record).unwrap();
        assert_eq!(who, node.public());
        assert_eq!(back.listening, vec![socket(2), socket(22)]);
        assert_eq!(record.body["listening"][0]["address"], "0.0.0.0");
        assert_eq!(record.body["listening"][0]["proto"], "tcp");
        assert_eq!(back.age(160), 60);
        assert_eq!(back.age(50), 0);
    }

    #[test]
    fn another_key_cannot_beat_for_a_node() {
        let key = NotaryKey::heartbeat(&sk(3).public());
        let forged =
            Record::sign_at(&key, serde_json::to_value(empty()).unwrap(), &sk(4), 1).unwrap();
        assert!(matches!(
            Heartbeat::from_record(&forged),
            Err(RegistryError::Record(_))
        ));
    }

    #[test]
    fn a_wireguard_label_is_listed_and_read_back_and_only_where_it_can_be() {
        let udp = |port: u16, inode: u64, uid: u32| Socket {
            proto: Proto::Udp6,
            address: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            uid,
            inode,
            ..socket(port)
        };
        // The kernel's socket on a WireGuard port; a process's on another one; the
        // kernel's on a port that is no link's; a TCP listener on a WireGuard port; a
        // socket of another uid that no process holds (no kernel socket has one).
        let mut sockets = vec![
            udp(51820, 9001, 0),
            udp(51821, 9002, 0),
            udp(4789, 9003, 0),
            socket(51820),
            udp(51822, 9004, 1000),
        ];
        let held = BTreeSet::from([9002]);
        label_wireguard(&mut sockets, &[51820, 51821, 51822], &held);
        let labels: Vec<Option<SocketLabel>> = sockets.iter().map(|s| s.label).collect();
        assert_eq!(
            labels,
            [Some(SocketLabel::Wireguard), None, None, None, None]
        );
        let mut hb = empty();
        hb.set_listening(sockets);
        assert_eq!(hb.unexpected_listening(), 4);
        let record = hb.sign(&sk(3), 100).unwrap();
        let listed = record.body["listening"].as_array().unwrap();
        let labelled: Vec<&serde_json::Value> =
            listed.iter().filter(|s| s.get("label").is_some()).collect();
        assert_eq!(labelled.len(), 1, "absent when None: {listed:?}");
        assert_eq!(labelled[0]["label"], "wireguard");
        assert_eq!(labelled[0]["port"], 51820);
        assert_eq!(Heartbeat::from_record(&record).unwrap().1, hb);

        // A node that calls a TCP listener `wireguard` (to hide it) is not believed.
        let mut body = record.body.clone();
        let tcp = body["listening"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|s| s["proto"] == "tcp")
            .unwrap();
        tcp["label"] = "wireguard".into();
        let forged =
            Record::sign_at(&NotaryKey::heartbeat(&sk(3).public()), body, &sk(3), 100).unwrap();
        assert!(matches!(
            Heartbeat::from_record(&forged),
            Err(RegistryError::Invalid {
                field: "listening.label",
                ..
            })
        ));
        // An unknown label is junk, not a free pass.
        let mut body = record.body.clone();
        body["listening"][0]["label"] = "sshd".into();
        let junk =
            Record::sign_at(&NotaryKey::heartbeat(&sk(3).public()), body, &sk(3), 100).unwrap();
        assert!(Heartbeat::from_record(&junk).is_err());
    }

    #[test]
    fn the_socket_list_is_bounded_and_counted() {
        let mut hb = empty();
        hb.set_listening((0..2000).map(socket).collect());
        assert_eq!(hb.listening.len(), MAX_SOCKETS);
        assert_eq!(hb.listening_total, 2000);
        hb.sign(&sk(3), 1).unwrap();
        hb.listening_total = 5;
        assert!(matches!(
            hb.sign(&sk(3), 1),
            Err(RegistryError::Invalid {
                field: "listening_total",
                ..
            })
        ));
    }
}
