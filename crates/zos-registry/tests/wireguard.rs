//! The heartbeat's `wireguard` label on real kernel sockets, as root, in a `zt-`
//! network namespace made for the test.
//!
//! This host's kernel has no WireGuard, but a WireGuard link's UDP socket is a kernel
//! socket like a VXLAN device's (both are made by the kernel's UDP tunnel helper, owned
//! by uid 0, held by no process): a VXLAN device on the port stands in for the link.
//! Beside it, the test process binds a UDP socket of its own on another port it also
//! names as a WireGuard port: a process's socket must stay an alarm.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;

use zos_registry::detect;
use zos_registry::{label_wireguard, Heartbeat, Proto, SocketLabel};

/// The kernel socket's port (WireGuard's usual one) and the process's.
const KERNEL_PORT: u16 = 51820;
const PROCESS_PORT: u16 = 51821;

/// A named network namespace, deleted on drop (success or failure).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("zt-hbwg-{}", std::process::id());
        ip(&["netns", "add", &name]).unwrap();
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn only_the_kernels_socket_on_a_wireguard_port_is_labelled() {
    let test = "only_the_kernels_socket_on_a_wireguard_port_is_labelled";
    if !zos_testkit::Needs::root().bin("ip").check(test) {
        return;
    }
    let ns = Netns::new();
    let port = KERNEL_PORT.to_string();
    for args in [
        &["-n", &ns.0, "link", "set", "lo", "up"][..],
        &[
            "-n",
            &ns.0,
            "link",
            "add",
            "zt-vx",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            &port,
            "local",
            "127.0.0.1",
        ],
        &["-n", &ns.0, "link", "set", "zt-vx", "up"],
    ] {
        if let Err(e) = ip(args) {
            zos_testkit::skip_or_fail(test, &format!("needs a kernel with VXLAN ({e})"));
            return;
        }
    }
    // The process's socket, bound inside the namespace by a thread that entered it and
    // kept open (by this process) until the reading is done.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let path = ns.path();
    let binder = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let udp = UdpSocket::bind(("0.0.0.0", PROCESS_PORT)).unwrap();
        ready_tx.send(()).unwrap();
        let _ = done_rx.recv();
        drop(udp);
    });
    ready_rx.recv().unwrap();

    let mut sockets = detect::listening_sockets(Some(&ns.path())).unwrap();
    let held = detect::held_socket_inodes().unwrap();
    done_tx.send(()).unwrap();
    binder.join().unwrap();
    let at = |sockets: &[zos_registry::Socket], port: u16| {
        sockets
            .iter()
            .find(|s| s.proto == Proto::Udp && s.port == port)
            .cloned()
            .unwrap_or_else(|| panic!("no UDP socket on {port}: {sockets:?}"))
    };
    let kernel = at(&sockets, KERNEL_PORT);
    assert_eq!(kernel.uid, 0, "{kernel:?}");
    assert!(!held.contains(&kernel.inode), "no process holds {kernel:?}");
    assert!(
        held.contains(&at(&sockets, PROCESS_PORT).inode),
        "this process holds its own socket"
    );

    label_wireguard(&mut sockets, &[KERNEL_PORT, PROCESS_PORT], &held);
    assert_eq!(
        at(&sockets, KERNEL_PORT).label,
        Some(SocketLabel::Wireguard)
    );
    assert_eq!(
        at(&sockets, PROCESS_PORT).label,
        None,
        "a process's socket on a port named as WireGuard's is not passed off as WireGuard's"
    );

    // Through a signed heartbeat and its reader: the label as the issue words it, and
    // the process's socket still the one alarm.
    let mut hb = Heartbeat {
        uptime_secs: 1,
        reserved: Default::default(),
        used: Default::default(),
        contracts: Default::default(),
        workloads: 0,
        listening: vec![],
        listening_total: 0,
        time: 1,
    };
    hb.set_listening(sockets);
    let node = zos_contract::SecretKey::from_seed([5; 32]);
    let record = hb.sign(&node, 1).unwrap();
    let listed = record.body["listening"].as_array().unwrap();
    let kernel_json = listed.iter().find(|s| s["port"] == KERNEL_PORT).unwrap();
    assert_eq!(kernel_json["proto"], "udp", "{kernel_json}");
    assert_eq!(kernel_json["label"], "wireguard", "{kernel_json}");
    let process_json = listed.iter().find(|s| s["port"] == PROCESS_PORT).unwrap();
    assert!(process_json.get("label").is_none(), "{process_json}");
    let (_, back) = Heartbeat::from_record(&record).unwrap();
    assert_eq!(back, hb);
    assert_eq!(back.listening_total, 2);
    assert_eq!(back.unexpected_listening(), 1);
}
