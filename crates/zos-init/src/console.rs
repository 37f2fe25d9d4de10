//! The console as PID 1's standard streams.

use nix::fcntl::{fcntl, open, FcntlArg, OFlag};

/// The kernel opens `/dev/console` as init's stdin, stdout and stderr only if the image
/// has that node; once devtmpfs is mounted it exists: open it then, so the console shows
/// the logs. Does nothing when stderr is open already.
pub fn ensure_console() {
    if fcntl(2, FcntlArg::F_GETFD).is_ok() {
        return;
    }
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY;
    if let Ok(fd) = open("/dev/console", flags, nix::sys::stat::Mode::empty()) {
        for target in 0..3 {
            let _ = nix::unistd::dup2(fd, target);
        }
        if fd > 2 {
            let _ = nix::unistd::close(fd);
        }
    }
}
