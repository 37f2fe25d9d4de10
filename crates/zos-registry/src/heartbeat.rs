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
//! "no login surface". It is expected to be empty.

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
    /// How many there are, listed or not.
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
