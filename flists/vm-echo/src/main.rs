//! `vm-echo`: PID 1 of the sample micro-VM (flists/vm-echo, built by `cargo xtask flist`).
//!
//! The kernel starts it from the initrd. It mounts /proc, /sys and /dev, loads the
//! modules listed in `/lib/modules/load-order` (virtio transport, NIC and disk drivers;
//! the Debian kernel has them as modules), configures `eth0` from the kernel command
//! line that zosd writes (`zos.ip=A.B.C.D/N zos.gw=E.F.G.H`), prints one line with its
//! address on the console, lists its disks, and answers TCP echo on `$ECHO_PORT`
//! (default 7). It never exits: PID 1 exiting would panic the guest kernel.

mod net;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    load_modules();

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let name = param(&cmdline, "zos.name").unwrap_or("vm");
    let port: u16 = std::env::var("ECHO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(7);
    let net = network(&cmdline);
    // Listen before saying so: the console line is the guest's readiness signal.
    let listener = listen(port);
    match net {
        Ok(Some((ip, prefix))) => say(&format!(
            "vm-echo: {name} eth0 {ip}/{prefix} up, echo on port {port}"
        )),
        Ok(None) => say(&format!("vm-echo: {name} has no zos.ip=, no network")),
        Err(e) => say(&format!("vm-echo: {name} network failed: {e}")),
    }
    for (disk, mib) in disks() {
        say(&format!("vm-echo: disk {disk} {mib} MiB"));
    }
    serve(listener);
}

/// A line on the console (our stdout is /dev/console).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("no NUL in a constant");
    let (source, target_c, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: every pointer is a live NUL-terminated string for the call; data is null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            say(&format!("vm-echo: mount {target}: {e}"));
        }
    }
}

/// Loads each module of `/lib/modules/load-order` (paths, dependencies first).
fn load_modules() {
    let order = std::fs::read_to_string("/lib/modules/load-order").unwrap_or_default();
    for path in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                say(&format!("vm-echo: module {path}: {e}"));
                continue;
            }
        };
        use std::os::fd::AsRawFd;
        // SAFETY: finit_module reads the module from an open fd; the params string is
        // a valid empty C string; flags are 0.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                say(&format!("vm-echo: module {path}: {e}"));
            }
        }
    }
}

/// The value of `key=value` on the kernel command line.
fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn network(cmdline: &str) -> Result<Option<(Ipv4Addr, u8)>, String> {
    let Some(ip) = param(cmdline, "zos.ip") else {
        return Ok(None);
    };
    let (addr, prefix) = ip.split_once('/').ok_or("zos.ip needs /prefix")?;
    let addr: Ipv4Addr = addr.parse().map_err(|e| format!("zos.ip: {e}"))?;
    let prefix: u8 = prefix.parse().map_err(|e| format!("zos.ip prefix: {e}"))?;
    let gw = param(cmdline, "zos.gw")
        .map(|g| g.parse::<Ipv4Addr>().map_err(|e| format!("zos.gw: {e}")))
        .transpose()?;
    // The NIC appears once virtio_net has probed it.
    for _ in 0..100 {
        if std::path::Path::new("/sys/class/net/eth0").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    net::configure("eth0", addr, prefix, gw).map_err(|e| e.to_string())?;
    Ok(Some((addr, prefix)))
}

/// Block devices and their sizes in MiB.
fn disks() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with("vd") {
                return None;
            }
            let sectors: u64 = std::fs::read_to_string(e.path().join("size"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((name, (sectors * 512) >> 20))
        })
        .collect();
    out.sort();
    out
}

fn listen(port: u16) -> TcpListener {
    loop {
        match TcpListener::bind(("0.0.0.0", port)) {
            Ok(listener) => return listener,
            Err(e) => say(&format!("vm-echo: listen on {port}: {e}")),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn serve(listener: TcpListener) -> ! {
    loop {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || echo(conn));
        }
    }
}

fn echo(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
