//! Which program runs QEMU: the system's `qemu-system-x86_64`, or a hypervisor bundle
//! (the release part `qemu`, laid out as `zos_release::hypervisor` says) run through
//! its own dynamic loader, without a shell and without the host's libraries.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use zos_contract::deployment::FlistRef;
use zos_flist::DirAccess;
use zos_release::hypervisor::{FIRMWARE, LIB, LOADER, MODULES, QEMU};

use crate::confine;
use crate::error::{Error, Result};

/// Where a node without a system QEMU gets one: a release's `qemu` part, fetched
/// (`zos_release::fetch_part`: the pin, the publisher's signature, every block) into
/// `<dir>/<sha256 of the part>` before the first VM starts, and kept there.
#[derive(Debug, Clone)]
pub struct BundleSource {
    /// The release's `parts.qemu`.
    pub part: FlistRef,
    /// Where its `dir://` URLs may be read.
    pub access: DirAccess,
    /// The directory bundles are kept in (on a pool: not in the image, not in RAM).
    pub dir: PathBuf,
    /// The most bytes the bundle may expand to.
    pub max_bytes: u64,
}

impl BundleSource {
    /// The bundle's directory: there already (a slot exists only once complete and
    /// verified), or fetched now. A refused part leaves no directory.
    pub fn ensure(&self) -> Result<PathBuf> {
        let slot = self.dir.join(self.part.sha256.to_hex());
        if slot.is_dir() {
            return Ok(slot);
        }
        tracing::info!(url = %self.part.url, slot = %slot.display(), "fetching the hypervisor bundle");
        zos_release::fetch_part("qemu", &self.part, &self.access, &slot, self.max_bytes)
            .map_err(|e| Error::Hypervisor(Box::new(e)))
    }
}

/// How QEMU is executed: the program, the arguments before QEMU's own, its
/// environment, and the host directory a confined QEMU must see for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invocation {
    program: PathBuf,
    prefix: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Bound read-only (exec allowed) into QEMU's view; `None` when it is under
    /// `/usr`, which every view holds.
    visible: Option<PathBuf>,
}

impl Invocation {
    /// `binary` as given (a name is searched in `PATH` by exec): the unconfined probe.
    pub(crate) fn plain(binary: &Path) -> Invocation {
        Invocation {
            program: binary.to_path_buf(),
            prefix: Vec::new(),
            env: Vec::new(),
            visible: None,
        }
    }

    /// The system's QEMU at `binary` (searched in `PATH` when it has no `/`), its
    /// directory visible in the view unless it is under `/usr`.
    pub(crate) fn system(binary: &Path) -> Result<Invocation> {
        let program = confine::resolve_binary(binary)?;
        let visible = match program.parent() {
            Some(dir) if !program.starts_with("/usr/") => Some(dir.to_path_buf()),
            _ => None,
        };
        Ok(Invocation {
            program,
            prefix: Vec::new(),
            env: Vec::new(),
            visible,
        })
    }

    /// The bundle at `dir`: its loader is the program (`--library-path <dir>/lib
    /// --inhibit-cache`: the bundle's libraries, never the host's cache), then QEMU
    /// (`--argv0` keeps its name in `ps`), then `-L <dir>/share/qemu`; its modules
    /// from `QEMU_MODULE_DIR=<dir>/lib/qemu`. The loader and QEMU must be regular
    /// files (a link out of the bundle is refused).
    pub(crate) fn bundle(dir: &Path) -> Result<Invocation> {
        let dir = std::fs::canonicalize(dir).map_err(Error::io("finding", dir))?;
        for rel in [LOADER, QEMU] {
            let p = dir.join(rel);
            let meta = p.symlink_metadata().map_err(Error::io("finding", &p))?;
            if !meta.is_file() {
                return Err(Error::Refused {
                    path: p,
                    reason: "not a regular file in the hypervisor bundle".into(),
                });
            }
        }
        let qemu = dir.join(QEMU).into_os_string();
        let prefix = vec![
            "--library-path".into(),
            dir.join(LIB).into_os_string(),
            "--inhibit-cache".into(),
            "--argv0".into(),
            qemu.clone(),
            qemu,
            "-L".into(),
            dir.join(FIRMWARE).into_os_string(),
        ];
        Ok(Invocation {
            program: dir.join(LOADER),
            prefix,
            env: vec![("QEMU_MODULE_DIR".into(), dir.join(MODULES).into_os_string())],
            visible: (!dir.starts_with("/usr/")).then_some(dir),
        })
    }

    /// A command that runs QEMU; its own arguments come next.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.prefix);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The program, for messages.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// The host directory QEMU's view must hold, if any.
    pub(crate) fn visible(&self) -> Option<&Path> {
        self.visible.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_binary_runs_as_before() {
        let inv = Invocation::system(Path::new("/bin/sh")).unwrap();
        let cmd = inv.command();
        assert_eq!(cmd.get_args().count(), 0);
        assert_eq!(cmd.get_envs().count(), 0);
    }

    #[test]
    fn a_bundle_runs_through_its_loader_with_its_libraries_and_firmware() {
        let tmp = zos_testkit::tempdir("program");
        let dir = tmp.path().canonicalize().unwrap();
        for rel in [LOADER, QEMU] {
            std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
            std::fs::write(dir.join(rel), b"x").unwrap();
        }
        let inv = Invocation::bundle(&dir).unwrap();
        let cmd = inv.command();
        assert_eq!(cmd.get_program(), dir.join(LOADER));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let q = dir.join(QEMU).into_os_string();
        assert_eq!(
            args,
            vec![
                OsString::from("--library-path"),
                dir.join("lib").into_os_string(),
                "--inhibit-cache".into(),
                "--argv0".into(),
                q.clone(),
                q,
                "-L".into(),
                dir.join("share/qemu").into_os_string(),
            ]
        );
        let env: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            env,
            vec![(
                std::ffi::OsStr::new("QEMU_MODULE_DIR"),
                Some(dir.join("lib/qemu").as_os_str())
            )]
        );
        assert_eq!(inv.visible(), Some(dir.as_path()));

        // A loader that is a link (out of the bundle) is refused.
        std::fs::remove_file(dir.join(LOADER)).unwrap();
        std::os::unix::fs::symlink("/lib64/ld-linux-x86-64.so.2", dir.join(LOADER)).unwrap();
        let e = Invocation::bundle(&dir).unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{e}");
    }
}
