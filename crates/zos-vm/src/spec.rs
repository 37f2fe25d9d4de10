//! What a VM is made of, independent of the hypervisor that runs it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::beneath::TreeFile;
use crate::error::{Error, Result};

/// The x86 kernel command line limit (COMMAND_LINE_SIZE), terminating NUL included.
pub const CMDLINE_MAX: usize = 2047;

/// One micro-VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Unique on the node: the run directory and cgroup leaf are named after it.
    pub name: String,
    /// What it boots: a kernel, or firmware from the first disk.
    pub boot: Boot,
    /// Virtual CPUs, 1 to 64.
    pub vcpus: u32,
    /// Guest memory in MiB, at least 32 (QEMU's own overhead comes on top).
    pub memory_mib: u64,
    /// virtio-blk disks in order: the guest sees `vda`, `vdb`, ...
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Its one network card; `None`: no network.
    #[serde(default)]
    pub nic: Option<Nic>,
    /// The network namespace QEMU runs in: where its tap lives. None: the caller's.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum Boot {
    /// Direct kernel boot on `-M microvm`: a PVH `vmlinux` (ELF) or a bzImage. Both
    /// files are opened beneath their tree (no links) and copied into the VM's run
    /// directory, where QEMU reads them.
    Kernel {
        /// The kernel image.
        kernel: TreeFile,
        /// The initial ramdisk; `None`: none.
        #[serde(default)]
        initrd: Option<TreeFile>,
        /// The kernel command line, at most [`CMDLINE_MAX`] bytes, no newline or NUL.
        cmdline: String,
    },
    /// Firmware boot (SeaBIOS on `-M q35`) from the first disk. The guest reads
    /// `config` (its network settings, `key=value` words) from SMBIOS OEM strings
    /// (type 11), as it has no kernel command line of ours.
    Disk {
        /// Space-separated `key=value` words for the guest (no comma, newline or NUL).
        config: String,
    },
}

/// A virtio-blk disk backed by a raw file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Opened beneath its directory (no links, a regular file with one link); QEMU
    /// gets the descriptor, never the path.
    pub file: TreeFile,
    /// The guest cannot write it (opened read-only too).
    #[serde(default)]
    pub read_only: bool,
}

/// A virtio-net card on a tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// A persistent tap device in [`VmSpec::netns`].
    pub tap: String,
    /// The guest's MAC address (see [`Nic::mac_for`]).
    pub mac: [u8; 6],
}

impl Nic {
    /// A stable, locally administered unicast MAC for `name` (FNV-1a of the name): the
    /// guest keeps its MAC across restarts, and its neighbours' ARP caches stay right.
    pub fn mac_for(name: &str) -> [u8; 6] {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        [0x02, b[0], b[1], b[2], b[3], b[4]]
    }

    /// The MAC as `02:ab:...` (lowercase hex, colon-separated), as QEMU takes it.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Names become directories, cgroup leaves and QEMU option values: keep them boring.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl VmSpec {
    /// Checks the spec's shape without opening any file: the first problem is an
    /// [`Error::InvalidSpec`] (permanent).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSpec(m));
        if !valid_name(&self.name) {
            return bad(format!("name {:?}: 1-64 of [A-Za-z0-9._-]", self.name));
        }
        if self.vcpus == 0 || self.vcpus > 64 {
            return bad(format!("{} vCPUs: 1 to 64", self.vcpus));
        }
        if self.memory_mib < 32 {
            return bad(format!("{} MiB of memory: at least 32", self.memory_mib));
        }
        match &self.boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                for f in std::iter::once(kernel).chain(initrd) {
                    f.check().map_err(Error::InvalidSpec)?;
                }
                if cmdline.len() > CMDLINE_MAX {
                    return bad(format!(
                        "kernel command line of {} bytes: at most {CMDLINE_MAX}",
                        cmdline.len()
                    ));
                }
                if cmdline.contains(['\n', '\0']) {
                    return bad("kernel command line with a newline or NUL".into());
                }
            }
            Boot::Disk { config } => {
                if self.disks.is_empty() {
                    return bad("a disk boot needs a first disk".into());
                }
                // QEMU's option parser splits on commas.
                if config.contains([',', '\n', '\0']) {
                    return bad("disk boot config with a comma, newline or NUL".into());
                }
            }
        }
        for d in &self.disks {
            d.file.check().map_err(Error::InvalidSpec)?;
        }
        if let Some(nic) = &self.nic {
            if nic.tap.is_empty() || nic.tap.len() > 15 || nic.tap.contains([',', '/']) {
                return bad(format!("tap name {:?}", nic.tap));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "c1.vm".into(),
            boot: Boot::Kernel {
                kernel: TreeFile::new("/f", "boot/vmlinux"),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
            vcpus: 1,
            memory_mib: 128,
            disks: vec![],
            nic: None,
            netns: None,
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        type Edit = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.name = "../x".into()), "name"),
            (Box::new(|s| s.vcpus = 0), "vCPUs"),
            (Box::new(|s| s.memory_mib = 8), "memory"),
            (
                Box::new(|s| {
                    s.boot = Boot::Kernel {
                        kernel: TreeFile::new("/f", "boot/vmlinux"),
                        initrd: None,
                        cmdline: "x".repeat(CMDLINE_MAX + 1),
                    }
                }),
                "command line",
            ),
            (
                Box::new(|s| {
                    s.boot = Boot::Disk {
                        config: String::new(),
                    }
                }),
                "first disk",
            ),
            (
                Box::new(|s| {
                    s.disks.push(Disk {
                        file: TreeFile::new("/v", "../escape.raw"),
                        read_only: false,
                    })
                }),
                "plain relative path",
            ),
            (
                Box::new(|s| {
                    s.nic = Some(Nic {
                        tap: "way-too-long-tap-name".into(),
                        mac: [2, 0, 0, 0, 0, 1],
                    })
                }),
                "tap name",
            ),
        ];
        assert!(spec().validate().is_ok());
        for (edit, want) in cases {
            let mut s = spec();
            edit(&mut s);
            let e = s.validate().unwrap_err();
            assert!(e.is_permanent());
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        }
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let a = Nic::mac_for("c1.vm");
        assert_eq!(a, Nic::mac_for("c1.vm"));
        assert_ne!(a, Nic::mac_for("c2.vm"));
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
    }
}
