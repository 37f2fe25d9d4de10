//! Detection on fixtures: /proc/net files of a little-endian machine (the byte order
//! the kernel prints addresses in is the host's; our targets are little-endian), a
//! /sys/class/net tree and a DMI directory. Plus, as root, the socket reader in a
//! fresh network namespace (skipped with a `SKIP:` line otherwise).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::path::Path;

use zos_registry::detect::{self, DetectError};
use zos_registry::{Proto, Socket};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn sock(proto: Proto, address: IpAddr, port: u16, uid: u32, inode: u64) -> Socket {
    Socket {
        proto,
        address,
        port,
        uid,
        inode,
        label: None,
    }
}

#[test]
#[cfg(target_endian = "little")]
fn tcp_listeners_only() {
    let got = detect::parse_proc_net(Proto::Tcp, &fixture("proc_net_tcp")).unwrap();
    assert_eq!(
        got,
        vec![
            sock(Proto::Tcp, Ipv4Addr::UNSPECIFIED.into(), 2024, 0, 636),
            sock(Proto::Tcp, Ipv4Addr::LOCALHOST.into(), 3306, 1000, 777),
        ],
        "ESTABLISHED and TIME_WAIT sockets are not listed"
    );
    let got = detect::parse_proc_net(Proto::Tcp6, &fixture("proc_net_tcp6")).unwrap();
    assert_eq!(
        got,
        vec![
            sock(Proto::Tcp6, Ipv6Addr::UNSPECIFIED.into(), 22, 0, 1234),
            sock(Proto::Tcp6, Ipv6Addr::LOCALHOST.into(), 8080, 0, 1235),
        ]
    );
}

#[test]
#[cfg(target_endian = "little")]
fn udp_bound_and_unconnected_only() {
    let got = detect::parse_proc_net(Proto::Udp, &fixture("proc_net_udp")).unwrap();
    assert_eq!(
        got,
        vec![sock(Proto::Udp, Ipv4Addr::UNSPECIFIED.into(), 68, 0, 4321)],
        "a connected UDP socket (a DNS query) is not a listener"
    );
    let got = detect::parse_proc_net(Proto::Udp6, &fixture("proc_net_udp6")).unwrap();
    assert_eq!(
        got,
        vec![sock(
            Proto::Udp6,
            "fe80::5054:ff:fe12:3456".parse().unwrap(),
            546,
            0,
            5555
        )]
    );
}

#[test]
fn a_proc_net_directory_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    for p in ["tcp", "tcp6", "udp"] {
        std::fs::write(dir.path().join(p), fixture(&format!("proc_net_{p}"))).unwrap();
    }
    // No udp6 (IPv6 disabled): no such sockets, not an error.
    let all = detect::listening_sockets_in(dir.path()).unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] <= w[1]), "sorted");
    // No udp: an error (IPv4 is always there; its absence means something is wrong).
    std::fs::remove_file(dir.path().join("udp")).unwrap();
    assert!(matches!(
        detect::listening_sockets_in(dir.path()),
        Err(DetectError::Io { .. })
    ));
}

#[test]
fn malformed_lines_are_errors_not_silence() {
    let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    for bad in [
        "   0: 00000000:07E8 00000000:0000 0A\n",
        "   0: 0000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1\n",
        "   0: 00000000:XYZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1\n",
        "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 x 0 1 1\n",
    ] {
        let err = detect::parse_proc_net(Proto::Tcp, &format!("{header}{bad}")).unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
    }
    assert_eq!(detect::parse_proc_net(Proto::Tcp, header).unwrap(), vec![]);
}

#[test]
fn only_hardware_nics_are_listed() {
    let root = tempfile::tempdir().unwrap();
    let net = root.path().join("class/net");
    let devices = root.path().join("devices/pci0000:00/0000:00:03.0");
    std::fs::create_dir_all(&devices).unwrap();
    let nic = |name: &str, mac: &str, hardware: bool| {
        let d = net.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
        if hardware {
            std::os::unix::fs::symlink(&devices, d.join("device")).unwrap();
        }
    };
    nic("lo", "00:00:00:00:00:00", false);
    nic("eth1", "52:54:00:AA:BB:02", true);
    nic("eth0", "52:54:00:aa:bb:01", true);
    nic("n-br0", "52:54:00:aa:bb:09", false);
    nic("veth0", "12:34:56:78:9a:bc", false);
    nic("weird", "00:00:00:00:00:00", true);
    let got = detect::nics_in(&net).unwrap();
    let names: Vec<(&str, &str)> = got
        .iter()
        .map(|n| (n.name.as_str(), n.mac.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("eth0", "52:54:00:aa:bb:01"), ("eth1", "52:54:00:aa:bb:02")]
    );
}

#[test]
fn dmi_fields_are_optional() {
    let dir = tempfile::tempdir().unwrap();
    let empty = detect::dmi_in(dir.path());
    assert_eq!(empty, Default::default());
    std::fs::write(dir.path().join("sys_vendor"), "Supermicro\n").unwrap();
    std::fs::write(dir.path().join("product_name"), "   \n").unwrap();
    std::fs::write(dir.path().join("product_serial"), "S123 \n").unwrap();
    let dmi = detect::dmi_in(dir.path());
    assert_eq!(dmi.vendor.as_deref(), Some("Supermicro"));
    assert_eq!(dmi.product, None, "blank is absent");
    assert_eq!(dmi.serial.as_deref(), Some("S123"));
}

/// As root: a fresh network namespace has no listener; a TCP listener and a bound UDP
/// socket made in it are seen from outside it, through its namespace file.
#[test]
fn the_reader_sees_the_sockets_of_another_namespace() {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            let _ = ready_tx.send(Err(e));
            return;
        }
        let tid = nix::unistd::gettid();
        let ns = format!("/proc/self/task/{tid}/ns/net");
        let empty = detect::listening_sockets(Some(Path::new(&ns))).unwrap();
        let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        let ports = (
            tcp.local_addr().unwrap().port(),
            udp.local_addr().unwrap().port(),
        );
        let _ = ready_tx.send(Ok((ns, empty, ports)));
        // Keep the namespace (and the sockets) until the reader is done.
        let _ = done_rx.recv();
    });
    let (ns, empty, (tcp, udp)) = match ready_rx.recv().unwrap() {
        Ok(v) => v,
        Err(e) => {
            zos_testkit::skip_line(
                "the_reader_sees_the_sockets_of_another_namespace",
                &format!("needs root (unshare: {e})"),
            );
            return;
        }
    };
    assert_eq!(empty, vec![], "a fresh namespace listens on nothing");
    let seen = detect::listening_sockets(Some(Path::new(&ns))).unwrap();
    let mut got: Vec<(Proto, u16)> = seen.iter().map(|s| (s.proto, s.port)).collect();
    got.sort();
    assert_eq!(got, vec![(Proto::Tcp, tcp), (Proto::Udp, udp)]);
    // And our own namespace's reader does not see them.
    let own = detect::listening_sockets(None).unwrap();
    assert!(!own
        .iter()
        .any(|s| s.port == tcp && s.proto == Proto::Tcp && s.inode == seen[0].inode));
    done_tx.send(()).unwrap();
    thread.join().unwrap();
}
