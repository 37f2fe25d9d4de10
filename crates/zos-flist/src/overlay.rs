//! A writable view over a mounted flist: overlayfs with the flist mount as the lower layer
//! and upper/work directories under a given state directory. Dropping it unmounts the
//! overlay, then the flist.

use std::path::{Path, PathBuf};

use nix::mount::{mount as sys_mount, umount2, MntFlags, MsFlags};

use crate::error::Error;
use crate::mount::MountedFlist;

/// overlayfs (upper, work, merged under `state`) on top of a flist mount.
#[derive(Debug)]
pub struct Overlay {
    merged: PathBuf,
    mounted: bool,
    lower: Option<MountedFlist>,
}

impl Overlay {
    /// Mounts overlayfs at `state/merged` with `lower` underneath; `state/upper` and
    /// `state/work` are created (and kept: the upper layer is the workload's data).
    pub fn mount(lower: MountedFlist, state: &Path) -> Result<Overlay, Error> {
        let upper = state.join("upper");
        let work = state.join("work");
        let merged = state.join("merged");
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d.as_path(), e))?;
        }
        for p in [lower.path(), upper.as_path(), work.as_path()] {
            // overlayfs splits its options on ',' and ':'.
            if p.to_string_lossy().contains([',', ':']) {
                return Err(Error::Mount {
                    path: p.to_path_buf(),
                    reason: "path contains ',' or ':' (overlayfs option separators)".into(),
                });
            }
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.path().display(),
            upper.display(),
            work.display()
        );
        sys_mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| Error::Mount {
            path: merged.clone(),
            reason: format!("overlay ({data}): {e}"),
        })?;
        tracing::info!(merged = %merged.display(), "overlay mounted");
        Ok(Overlay {
            merged,
            mounted: true,
            lower: Some(lower),
        })
    }

    /// The merged directory: the flist's tree with the writable upper layer on top.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// Unmounts the overlay, then the flist.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), Error> {
        if self.mounted {
            if let Err(e) = umount2(&self.merged, MntFlags::empty()) {
                tracing::warn!(merged = %self.merged.display(), error = %e, "umount failed; detaching");
                umount2(&self.merged, MntFlags::MNT_DETACH).map_err(|e| Error::Mount {
                    path: self.merged.clone(),
                    reason: format!("umount: {e}"),
                })?;
            }
            self.mounted = false;
        }
        match self.lower.take() {
            Some(l) => l.unmount(),
            None => Ok(()),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(error = %e, "overlay teardown failed");
        }
    }
}
