//! Persistent tap devices for VMs. The kernel refuses to create tun/tap links over
//! rtnetlink ("not supported"), so this is the TUNSETIFF ioctl on /dev/net/tun, as
//! `ip tuntap add` does. The device is created in the namespace of the thread that
//! opens /dev/net/tun (run it inside the tenant namespace); deleting it is ordinary
//! RTM_DELLINK.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};

/// Create the persistent tap `name` (no packet-info header) in the calling thread's
/// namespace. The VM manager later opens it by name (TUNSETIFF again) to use it.
pub fn create(name: &str) -> Result<()> {
    let fail = |op, source| Error::Tap {
        name: name.into(),
        op,
        source,
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| fail("open /dev/net/tun", e))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The caller validated name as at most 15 bytes, so the NUL still fits.
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is, and the
    // fd is an open /dev/net/tun that outlives the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(fail("TUNSETIFF", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(fail("TUNSETPERSIST", std::io::Error::last_os_error()));
    }
    tracing::debug!(tap = name, "tap created");
    Ok(())
}
