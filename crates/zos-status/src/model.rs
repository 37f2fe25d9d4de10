//! The status model: plain data, serialized as the JSON `zos status --json` prints.

use serde::{Deserialize, Serialize};

/// How many recent errors are kept (oldest dropped first).
pub const MAX_ERRORS: usize = 10;

/// CPUs, memory and disk, in bytes (CPUs in logical CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Logical CPUs.
    pub cpu: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// SSD pool space, in bytes.
    pub ssd_bytes: u64,
    /// HDD pool space, in bytes.
    pub hdd_bytes: u64,
}

/// One storage pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool's btrfs label.
    pub label: String,
    /// "ssd" or "hdd".
    pub kind: String,
    /// "online", "missing", ...
    pub state: String,
    /// Its size, in bytes.
    pub size_bytes: u64,
    /// Bytes in use on it.
    pub used_bytes: u64,
}

/// One contract this node has heard of, as its last status report says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractStatus {
    /// The contract id.
    pub id: String,
    /// The contract version the report is about; `None`: the document had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// "provisioning", "ok", "error", "refused".
    pub state: String,
    /// The report's explanation (why it failed or was refused; may be empty).
    pub message: String,
}

/// One workload of an owned contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadLine {
    /// The id of the contract it belongs to.
    pub contract: String,
    /// Its resource name in the contract.
    pub name: String,
    /// "container" or "vm".
    pub kind: String,
    /// "running", "exited", "absent", ...
    pub state: String,
    /// Times it was restarted since it was deployed.
    pub restarts: u32,
    /// Its address on its tenant network; `None`: it has none (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What runs it, when worth saying (a VM: `qemu/kvm` or `qemu/tcg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Its newest output line (container stdout/stderr, a VM's console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// A recent error, for the farmer looking at the screen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// Unix seconds.
    pub time: u64,
    /// What it is about: "farm", `"contract <id>"`, "pools", ...
    pub source: String,
    /// The error, as one line of text.
    pub message: String,
}

/// Everything the status screen and the D-Bus interface show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's public key (lowercase hex); empty until the identity is read.
    pub node: String,
    /// The farm the node joins; `None`: a development node with no farm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm: Option<String>,
    /// zosd's version.
    pub version: String,
    /// Where the agent is: "starting", "registering", "serving", "stopping".
    pub state: String,
    /// The machine's uptime, in seconds.
    pub uptime_secs: u64,
    /// The node's addresses, `<interface> <address>/<prefix>`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The storage pools.
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
    /// What contracts may reserve in total.
    #[serde(default)]
    pub offered: Resources,
    /// What the owned contracts reserve.
    #[serde(default)]
    pub reserved: Resources,
    /// Every contract the node has reported on, owned or refused.
    #[serde(default)]
    pub contracts: Vec<ContractStatus>,
    /// The workloads of the owned contracts.
    #[serde(default)]
    pub workloads: Vec<WorkloadLine>,
    /// Most recent last, at most [`MAX_ERRORS`].
    #[serde(default)]
    pub errors: Vec<LastError>,
}

impl NodeStatus {
    /// Records an error; the same source and message again only moves its time (a
    /// retry loop must not push every other error off the screen).
    pub fn push_error(&mut self, time: u64, source: &str, message: &str) {
        if let Some(last) = self
            .errors
            .iter_mut()
            .find(|e| e.source == source && e.message == message)
        {
            last.time = time;
            self.errors.sort_by_key(|e| e.time);
            return;
        }
        self.errors.push(LastError {
            time,
            source: source.to_string(),
            message: message.to_string(),
        });
        if self.errors.len() > MAX_ERRORS {
            let drop = self.errors.len() - MAX_ERRORS;
            self.errors.drain(..drop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_bounded_and_repeats_refresh() {
        let mut s = NodeStatus::default();
        for i in 0..15u64 {
            s.push_error(i, "farm", &format!("e{i}"));
        }
        assert_eq!(s.errors.len(), MAX_ERRORS);
        assert_eq!(s.errors[0].message, "e5");
        s.push_error(100, "farm", "e5");
        assert_eq!(s.errors.len(), MAX_ERRORS);
        assert_eq!(s.errors.last().unwrap().message, "e5");
        assert_eq!(s.errors.last().unwrap().time, 100);
    }

    #[test]
    fn json_round_trips() {
        let mut s = NodeStatus {
            node: "ab".into(),
            farm: Some("f".into()),
            ..NodeStatus::default()
        };
        s.push_error(1, "x", "y");
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<NodeStatus>(&text).unwrap(), s);
    }
}
