//! The guest protocol: what a VM learns from the node, and how.
//!
//! - Its name, address and gateway: `zos.name=<name> zos.ip=A.B.C.D/N zos.gw=E.F.G.H`.
//! - Where each extra disk goes: `zos.disk.vdb=/data` (`vda` is the root disk; the
//!   contract's mounted volumes follow in mount order from `vdb`).
//! - The contract's `env` as `KEY=VALUE` words (the kernel hands those to init as its
//!   environment).
//! - The contract's `entrypoint` after `--` (init's arguments), kernel boots only.
//!
//! A kernel boot gets those words on its kernel command line, after
//! `console=ttyS0 quiet panic=-1`; a disk-image boot gets the same words (without the
//! entrypoint) in an SMBIOS OEM string ([`crate::Boot::Disk`]'s `config`). Every word
//! must stay one word on a command line ([`cmdline_safe`]): a contract whose word would
//! split or quote is refused, never mangled.

use zos_engine::WorkloadPlan;

/// What the kernel command line starts with: the serial console QEMU logs, a quiet
/// boot, and a guest that panics powers off (QEMU exits; supervision restarts it).
pub const CMDLINE_PREFIX: &str = "console=ttyS0 quiet panic=-1";

/// Why a contract's VM cannot be told what it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// A configuration word (name, address, env `K=V`, mount) that the kernel would
    /// split or mangle.
    #[error("{0:?} cannot go on a kernel command line (spaces, quotes or control characters)")]
    Word(String),
    /// An entrypoint argument that cannot be passed after `--` unchanged.
    #[error("entrypoint argument {0:?} cannot go on a kernel command line")]
    Entrypoint(String),
    /// More volume mounts than disk names `vdb` to `vdz`.
    #[error("{0} mounted volumes, at most {MAX_VOLUME_DISKS} (vdb to vdz)")]
    TooManyDisks(usize),
}

/// Volume disks a VM can have: `vdb` to `vdz`.
pub const MAX_VOLUME_DISKS: usize = 25;

/// The device name of the `i`-th mounted volume (`vdb` for the first).
pub(crate) fn volume_device(i: usize) -> Option<String> {
    (i < MAX_VOLUME_DISKS).then(|| format!("vd{}", (b'b' + i as u8) as char))
}

/// The configuration words of `plan` (see the module docs), every one checked.
pub fn words(plan: &WorkloadPlan) -> Result<Vec<String>, GuestError> {
    let w = &plan.workload;
    let mut words = vec![format!("zos.name={}", w.name)];
    if let Some((net, ip)) = &plan.network {
        words.push(format!("zos.ip={ip}/{}", net.prefix_len));
        words.push(format!("zos.gw={}", net.gateway));
    }
    for (i, (_, target, _)) in plan.mounts.iter().enumerate() {
        let dev = volume_device(i).ok_or(GuestError::TooManyDisks(plan.mounts.len()))?;
        words.push(format!("zos.disk.{dev}={target}"));
    }
    for (k, v) in &w.env {
        words.push(format!("{k}={v}"));
    }
    match words.iter().find(|w| !cmdline_safe(w)) {
        Some(bad) => Err(GuestError::Word(bad.clone())),
        None => Ok(words),
    }
}

/// The kernel command line of a kernel boot: [`CMDLINE_PREFIX`], the `words`, and the
/// contract's entrypoint after `--`.
pub fn kernel_cmdline(plan: &WorkloadPlan, words: &[String]) -> Result<String, GuestError> {
    let mut cmdline = format!("{CMDLINE_PREFIX} {}", words.join(" "));
    let entrypoint = &plan.workload.entrypoint;
    if !entrypoint.is_empty() {
        if let Some(bad) = entrypoint.iter().find(|a| !cmdline_safe(a)) {
            return Err(GuestError::Entrypoint(bad.clone()));
        }
        cmdline.push_str(" -- ");
        cmdline.push_str(&entrypoint.join(" "));
    }
    Ok(cmdline)
}

/// A word the kernel's command-line parser keeps whole: no whitespace, quotes or
/// control characters.
pub fn cmdline_safe(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\'')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_words_stay_whole() {
        assert!(cmdline_safe("ECHO_PORT=7"));
        assert!(cmdline_safe("zos.disk.vdb=/data"));
        for bad in ["", "a b", "x=\"y\"", "tab\there", "new\nline", "é"] {
            assert!(!cmdline_safe(bad), "{bad:?}");
        }
    }

    fn plan(extra: serde_json::Value) -> WorkloadPlan {
        let mut workload = serde_json::json!({
            "name": "vm",
            "kind": "vm",
            "cpu": 1,
            "memory_mib": 64,
            "flist": {"url": "dir:///x.fl", "sha256": "0".repeat(64), "stores": []},
        });
        workload
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        WorkloadPlan {
            name: "c1.vm".into(),
            workload: serde_json::from_value(workload).unwrap(),
            network: Some((
                zos_engine::NetworkPlan {
                    name: "c1.net".into(),
                    subnet: "10.84.0.0".parse().unwrap(),
                    prefix_len: 24,
                    gateway: "10.84.0.1".parse().unwrap(),
                    forwards: Vec::new(),
                    egress_allow: Vec::new(),
                },
                "10.84.0.2".parse().unwrap(),
            )),
            mounts: vec![
                ("/pool/a".into(), "/data".into(), false),
                ("/pool/b".into(), "/logs".into(), true),
            ],
            logs: None,
        }
    }

    #[test]
    fn the_guest_gets_its_address_disks_env_and_entrypoint() {
        let p = plan(serde_json::json!({
            "env": {"ECHO_PORT": "7"},
            "entrypoint": ["/sbin/init", "-v"],
        }));
        let words = words(&p).unwrap();
        assert_eq!(
            words,
            [
                "zos.name=vm",
                "zos.ip=10.84.0.2/24",
                "zos.gw=10.84.0.1",
                "zos.disk.vdb=/data",
                "zos.disk.vdc=/logs",
                "ECHO_PORT=7",
            ]
        );
        assert_eq!(
            kernel_cmdline(&p, &words).unwrap(),
            "console=ttyS0 quiet panic=-1 zos.name=vm zos.ip=10.84.0.2/24 zos.gw=10.84.0.1 \
             zos.disk.vdb=/data zos.disk.vdc=/logs ECHO_PORT=7 -- /sbin/init -v"
        );
    }

    #[test]
    fn a_word_that_would_split_is_refused() {
        let p = plan(serde_json::json!({"env": {"A": "x y"}}));
        assert_eq!(words(&p), Err(GuestError::Word("A=x y".into())));
        let p = plan(serde_json::json!({"entrypoint": ["/init", "a b"]}));
        let w = words(&p).unwrap();
        assert_eq!(
            kernel_cmdline(&p, &w),
            Err(GuestError::Entrypoint("a b".into()))
        );
        assert_eq!(volume_device(24).as_deref(), Some("vdz"));
        assert_eq!(volume_device(25), None);
    }
}
