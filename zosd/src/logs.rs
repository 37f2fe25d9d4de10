//! The node's own logs leave the node (zos-logship; docs/observability.md): zosd's
//! events, and on a booted node the kernel's (PID 1's lines are in it), to the
//! destination the farm record names.
//!
//! The shipper starts with the process, before the node knows its id or its farm: lines
//! queue (bounded, drops counted) until the farm record is read.

use std::path::Path;

use zos_contract::PublicKey;
use zos_logship::kmsg::{self, KmsgReader};
use zos_logship::{Destination, NodeSink, PinnedCa, Shipper};
use zos_registry::Farm;

/// The node's log shipper and a sink into it.
pub struct NodeLogs {
    shipper: Shipper,
    sink: NodeSink,
}

impl NodeLogs {
    /// The shipper `init_logs` (main.rs) started, and a sink into it.
    pub fn new(shipper: Shipper, sink: NodeSink) -> NodeLogs {
        NodeLogs { shipper, sink }
    }

    /// Every line, queued ones too, carries the node id as HOSTNAME.
    pub fn named(&self, node: &PublicKey) {
        self.shipper.set_hostname(node.to_string());
    }

    /// Sends to the farm's destination, if it names one. A destination the node cannot
    /// use is said, and the lines keep queueing.
    pub fn bind(&self, farm: Option<&Farm>) {
        let Some(target) = farm.and_then(|f| f.logs.as_ref()) else {
            tracing::info!("the farm names no log destination: logs stay on the node");
            return;
        };
        let ca = match target
            .ca_pem
            .as_deref()
            .map(|p| PinnedCa::from_pem(p.as_bytes()))
        {
            None => None,
            Some(Ok(ca)) => Some(ca),
            Some(Err(e)) => {
                tracing::warn!(url = %target.url, error = %e, "the farm's log CA is unusable");
                return;
            }
        };
        match Destination::parse_with_ca(&target.url, ca) {
            Ok(dest) => {
                tracing::info!(%dest, "node logs go to the farm's destination");
                self.shipper.set_destination(dest);
            }
            Err(e) => {
                tracing::warn!(url = %target.url, error = %e, "the farm's log destination is unusable")
            }
        }
    }

    /// Forwards the kernel log, from the start of its ring, on a thread of its own.
    /// The sequence number of the last record sent is kept in `seq_file` (with the boot
    /// id: numbers start again at every boot), so that an agent restart does not send
    /// the ring again.
    pub fn forward_kernel(&self, seq_file: &Path) {
        let reader = match KmsgReader::open(Path::new("/dev/kmsg"), true) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the kernel log cannot be read; it is not shipped");
                return;
            }
        };
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let after = std::fs::read_to_string(seq_file).ok().and_then(|s| {
            let (id, seq) = s.trim().split_once(' ')?;
            (id == boot_id).then(|| seq.parse().ok()).flatten()
        });
        let seq_file = seq_file.to_path_buf();
        // A small file on the state tmpfs: cheap at the kernel log's rate.
        let sent = move |seq: u64| {
            let _ = std::fs::write(&seq_file, format!("{boot_id} {seq}"));
        };
        if let Err(e) = kmsg::forward_after(reader, self.sink.clone(), after, sent) {
            tracing::warn!(error = %e, "no thread for the kernel log");
        }
    }
}

/// The workloads' output lines, each to the destination its own contract names
/// (deployment `logs`): one shipper per contract, reached only through that contract's
/// sink, so a line of one tenant can never go to another's receiver.
pub struct TenantLogs {
    shippers: std::sync::Mutex<zos_logship::TenantShippers>,
    runtime: tokio::runtime::Handle,
}

impl TenantLogs {
    /// No contract bound yet; lines stamped with `node` as HOSTNAME. Call it inside the
    /// runtime: the shippers are its tasks.
    pub fn new(node: &PublicKey) -> std::sync::Arc<TenantLogs> {
        std::sync::Arc::new(TenantLogs {
            shippers: std::sync::Mutex::new(zos_logship::TenantShippers::new(
                zos_logship::ShipperConfig::new(node.to_string()),
            )),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn shippers(&self) -> std::sync::MutexGuard<'_, zos_logship::TenantShippers> {
        self.shippers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The contract of workload `name` sends its lines to `logs` from now on (`None`:
    /// nowhere). A destination the node cannot use is said, and nothing is sent.
    pub fn bind(&self, name: &str, logs: Option<&zos_contract::deployment::Telemetry>) {
        let Some(contract) = zos_engine::names::owner(name) else {
            return;
        };
        let dest = match logs {
            None => None,
            Some(t) => {
                let ca = match t
                    .ca_pem
                    .as_deref()
                    .map(|p| PinnedCa::from_pem(p.as_bytes()))
                {
                    None => None,
                    Some(Ok(ca)) => Some(ca),
                    Some(Err(e)) => {
                        tracing::warn!(contract, error = %e, "the contract's log CA is unusable");
                        return;
                    }
                };
                match Destination::parse_with_ca(&t.url, ca) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(contract, error = %e, "the contract's log destination is unusable");
                        return;
                    }
                }
            }
        };
        let _runtime = self.runtime.enter();
        if let Err(e) = self.shippers().set(contract, dest) {
            tracing::warn!(contract, error = %e, "the contract's log shipper did not start");
        }
    }
}

impl zos_container::LineTap for TenantLogs {
    fn line(&self, container: &str, stream: zos_container::Stream, line: &str) {
        let Some((contract, workload)) = container.split_once('.') else {
            return;
        };
        let Some(sink) = self.shippers().sink(contract) else {
            return;
        };
        let severity = match stream {
            zos_container::Stream::Stdout => zos_logship::Severity::Informational,
            zos_container::Stream::Stderr => zos_logship::Severity::Error,
        };
        sink.send(
            workload,
            zos_logship::Line::new(workload, severity, line)
                .facility(zos_logship::Facility::User)
                .param("stream", stream.name()),
        );
    }
}
