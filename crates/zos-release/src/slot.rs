//! One part of a release fetched and verified into a slot directory.
//!
//! The slot is complete or absent: the part is unpacked beside it
//! (`.<slot>.partial`), every block verified by zos-flist, the filesystem synced, and
//! only then renamed into place. A refused part leaves no slot and no partial tree.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, PublicKey};
use zos_flist::{DirAccess, Fetcher, Flist, Router, UnpackOptions};

use crate::release::{
    verify_release_bytes, verify_signed, ReleaseRefusal, SignedRelease, VerifiedRelease,
};
use crate::version::Version;

/// Why a part was not installed into its slot.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The part is not what the release pins: its `.fl` bytes are not the pinned ones,
    /// its publisher's signature is missing or bad, its metadata is hostile, or a block
    /// fails its hashes (code `tampered_part`).
    #[error("part {part} is tampered: {source}")]
    Tampered {
        /// The part's name (`zosd`, `qemu`).
        part: String,
        /// zos-flist's refusal.
        #[source]
        source: zos_flist::Error,
    },
    /// The part is refused for another permanent reason: a URL the node may not read,
    /// more bytes than the slot may take (code `part_refused`).
    #[error("part {part} is refused: {source}")]
    Refused {
        /// The part's name.
        part: String,
        /// zos-flist's refusal.
        #[source]
        source: zos_flist::Error,
    },
    /// The part could not be fetched now (a store or server down, an I/O error): trying
    /// again may help (code `part_unavailable`).
    #[error("part {part} is unavailable: {source}")]
    Unavailable {
        /// The part's name.
        part: String,
        /// What failed.
        #[source]
        source: zos_flist::Error,
    },
    /// The slot directory exists already: a slot is written once.
    #[error("slot {0} exists already")]
    SlotExists(PathBuf),
    /// Preparing or committing the slot failed.
    #[error("slot {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl PartError {
    /// A stable code: `tampered_part`, `part_refused`, `part_unavailable`,
    /// `slot_exists`, `slot_io`.
    pub fn code(&self) -> &'static str {
        match self {
            PartError::Tampered { .. } => "tampered_part",
            PartError::Refused { .. } => "part_refused",
            PartError::Unavailable { .. } => "part_unavailable",
            PartError::SlotExists(_) => "slot_exists",
            PartError::Io { .. } => "slot_io",
        }
    }

    /// The part's name, when the error is about the part.
    pub fn part(&self) -> Option<&str> {
        match self {
            PartError::Tampered { part, .. }
            | PartError::Refused { part, .. }
            | PartError::Unavailable { part, .. } => Some(part),
            _ => None,
        }
    }

    fn of(part: &str, source: zos_flist::Error) -> Self {
        use zos_flist::Error as E;
        let part = part.to_string();
        let tampered = match &source {
            E::Pin { .. } | E::Sign(_) | E::Format { .. } => true,
            E::Block { reason, .. } => reason.is_bad_data(),
            _ => false,
        };
        if tampered {
            PartError::Tampered { part, source }
        } else if source.is_permanent() {
            PartError::Refused { part, source }
        } else {
            PartError::Unavailable { part, source }
        }
    }
}

/// Fetches the part `name` of a release (its flist `flist`) into the new directory
/// `slot`: the `.fl` checked against its pin and its publisher's signature
/// (`zos_flist::fetch_verified`, `<url>.sig` beside it), the stores reached only where
/// `access` allows, every block checked against both of its hashes, at most `max_bytes`
/// of files. The tree is unpacked into `.<slot>.partial` beside `slot` and renamed into
/// place after a sync of its filesystem: on any error neither exists afterwards.
pub fn fetch_part(
    name: &str,
    flist: &FlistRef,
    access: &DirAccess,
    slot: &Path,
    max_bytes: u64,
) -> Result<PathBuf, PartError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PartError::Io { path, source }
    };
    if slot.symlink_metadata().is_ok() {
        return Err(PartError::SlotExists(slot.to_path_buf()));
    }
    let parent = slot.parent().unwrap_or(Path::new("."));
    let file = slot.file_name().and_then(|f| f.to_str()).unwrap_or("slot");
    let partial = parent.join(format!(".{file}.partial"));
    fs::create_dir_all(parent).map_err(io(parent))?;
    let _ = fs::remove_dir_all(&partial);

    let bytes = zos_flist::fetch_verified(flist, access).map_err(|e| PartError::of(name, e))?;
    let parsed =
        Flist::from_bytes(Path::new(&flist.url), &bytes).map_err(|e| PartError::of(name, e))?;
    let router = Router::parse_in(&flist.stores, access)
        .map_err(|e| PartError::of(name, zos_flist::Error::Store(e)))?;
    let fetcher = Fetcher::new(router, None);
    fs::create_dir(&partial).map_err(io(&partial))?;
    let unpacked = zos_flist::unpack_bounded(
        &parsed,
        &fetcher,
        &partial,
        &UnpackOptions::default(),
        max_bytes,
    );
    if let Err(e) = unpacked {
        let _ = fs::remove_dir_all(&partial);
        tracing::warn!(part = name, url = %flist.url, error = %e, "release part refused");
        return Err(PartError::of(name, e));
    }
    let commit = || -> std::io::Result<()> {
        let dir = fs::File::open(parent)?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(std::io::Error::from)?;
        fs::rename(&partial, slot)?;
        dir.sync_all()
    };
    if let Err(e) = commit() {
        let _ = fs::remove_dir_all(&partial);
        return Err(PartError::Io {
            path: slot.to_path_buf(),
            source: e,
        });
    }
    tracing::info!(part = name, url = %flist.url, slot = %slot.display(), "release part installed");
    Ok(slot.to_path_buf())
}

/// Why a release was not installed: refused as a record, or one of its parts.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The record is refused ([`verify_release`]): nothing was fetched.
    #[error(transparent)]
    Release(#[from] ReleaseRefusal),
    /// A part is refused or unavailable: the slot was not written.
    #[error(transparent)]
    Part(Box<PartError>),
}

impl From<PartError> for InstallError {
    fn from(e: PartError) -> Self {
        InstallError::Part(Box::new(e))
    }
}

impl InstallError {
    /// The refusal's or the part error's stable code.
    pub fn code(&self) -> &'static str {
        match self {
            InstallError::Release(r) => r.code(),
            InstallError::Part(p) => p.code(),
        }
    }
}

/// A release installed in its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The verified release.
    pub release: VerifiedRelease,
    /// `slots/<version>`: one directory per part (`zosd/`, `qemu/`).
    pub slot: PathBuf,
}

/// The release record `record` (bytes as read from the notary) verified
/// ([`verify_release_bytes`]) and each of its parts fetched and verified
/// ([`fetch_part`]) into `slots/<version>/<part>/`. The parts are unpacked under
/// `slots/.<version>.partial` and renamed to `slots/<version>` once all of them are
/// complete: a refused record or part leaves no slot and no partial directory.
/// `max_bytes` bounds each part's files.
pub fn install_release(
    record: &[u8],
    pinned_keys: &BTreeSet<PublicKey>,
    running: &Version,
    access: &DirAccess,
    slots: &Path,
    max_bytes: u64,
) -> Result<Installed, InstallError> {
    let release = verify_release_bytes(record, pinned_keys, running)?;
    let slot = slots.join(release.version.to_string());
    let partial = slots.join(format!(".{}.partial", release.version));
    if slot.symlink_metadata().is_ok() {
        return Err(PartError::SlotExists(slot).into());
    }
    let _ = fs::remove_dir_all(&partial);
    let result = (|| -> Result<(), PartError> {
        for (name, flist) in release.parts.iter() {
            fetch_part(name, flist, access, &partial.join(name), max_bytes)?;
        }
        let io = |source| PartError::Io {
            path: slot.clone(),
            source,
        };
        // What the boot check reads back (`check_slot`): the record as verified, and
        // the agent's sha256 as installed.
        let agent = fs::read(partial.join(AGENT)).map_err(io)?;
        write_synced(&partial.join(RECORD), record).map_err(io)?;
        write_synced(
            &partial.join(AGENT_SHA256),
            format!("{}\n", Digest::of(&agent)).as_bytes(),
        )
        .map_err(io)?;
        fs::rename(&partial, &slot).map_err(io)?;
        fs::File::open(slots).and_then(|d| d.sync_all()).map_err(io)
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&partial);
        tracing::warn!(version = %release.version, code = e.code(), error = %e, "release not installed");
        return Err(e.into());
    }
    tracing::info!(version = %release.version, slot = %slot.display(), "release installed");
    Ok(Installed { release, slot })
}

/// In a slot: the agent's binary.
pub const AGENT: &str = "zosd/zosd";
/// In a slot: the release record's bytes, as verified at install.
pub const RECORD: &str = "release.json";
/// In a slot: the sha256 (hex) of [`AGENT`] as installed.
pub const AGENT_SHA256: &str = "zosd.sha256";

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Why an installed slot may not run (at boot, or when the agent asks for it).
#[derive(Debug, thiserror::Error)]
pub enum SlotCheckError {
    /// No such slot, or a piece of it missing or unreadable.
    #[error("slot {version}: {path}: {source}")]
    Missing {
        /// The slot.
        version: String,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Its record no longer verifies against the pinned keys.
    #[error("slot {version}: {refusal}")]
    Release {
        /// The slot.
        version: String,
        /// Why.
        refusal: ReleaseRefusal,
    },
    /// The record names another version than the slot's directory.
    #[error("slot {version} holds the release of {record}")]
    VersionMismatch {
        /// The slot.
        version: String,
        /// The record's version.
        record: String,
    },
    /// The agent's binary is not the one installed.
    #[error("slot {version}: the agent's sha256 is {found}, {installed} was installed")]
    AgentChanged {
        /// The slot.
        version: String,
        /// As installed.
        installed: String,
        /// Now.
        found: String,
    },
}

impl SlotCheckError {
    /// A stable code: `no_slot`, the release refusal's code, `version_mismatch`,
    /// `agent_changed`.
    pub fn code(&self) -> &'static str {
        match self {
            SlotCheckError::Missing { .. } => "no_slot",
            SlotCheckError::Release { refusal, .. } => refusal.code(),
            SlotCheckError::VersionMismatch { .. } => "version_mismatch",
            SlotCheckError::AgentChanged { .. } => "agent_changed",
        }
    }
}

/// Checks the installed slot `slots/<version>` before its agent runs: its record still
/// verifies against `pinned_keys` (signed, by a pinned key, validly: no version rule)
/// and names `version`, and the agent's binary has the sha256 recorded at install.
/// Returns the agent's path.
pub fn check_slot(
    slots: &Path,
    version: &str,
    pinned_keys: &BTreeSet<PublicKey>,
) -> Result<PathBuf, SlotCheckError> {
    let slot = slots.join(version);
    let read = |name: &str| {
        let path = slot.join(name);
        fs::read(&path).map_err(|source| SlotCheckError::Missing {
            version: version.to_owned(),
            path,
            source,
        })
    };
    let record = read(RECORD)?;
    let signed =
        SignedRelease::from_bytes(&record, &zos_contract::Limits::default()).map_err(|e| {
            SlotCheckError::Release {
                version: version.to_owned(),
                refusal: ReleaseRefusal::Malformed {
                    reason: e.to_string(),
                },
            }
        })?;
    verify_signed(&signed, pinned_keys).map_err(|refusal| SlotCheckError::Release {
        version: version.to_owned(),
        refusal,
    })?;
    if signed.release.version.to_string() != version {
        return Err(SlotCheckError::VersionMismatch {
            version: version.to_owned(),
            record: signed.release.version.to_string(),
        });
    }
    let installed = String::from_utf8_lossy(&read(AGENT_SHA256)?)
        .trim()
        .to_owned();
    let found = Digest::of(&read(AGENT)?).to_string();
    if found != installed {
        return Err(SlotCheckError::AgentChanged {
            version: version.to_owned(),
            installed,
            found,
        });
    }
    Ok(slot.join(AGENT))
}
