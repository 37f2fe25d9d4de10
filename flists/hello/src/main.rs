//! `hello`: the sample workload packed into the demo's flist.
//!
//! It prints who it is, appends a line to `$HELLO_DATA/hello.log` (its volume), answers
//! every TCP connection on `$HELLO_PORT` with one line, and prints a heartbeat every
//! few seconds. Arguments: `--users N --region R` (from the blueprint's parameters).
//!
//! For the tenant network across nodes (docs/network.md, "Mesh"), optionally:
//! - `HELLO_PEERS=ip:port,...`: connects to each every second, sends `$HELLO_MARKER`
//!   (if set) and prints `peer <addr>: ok <its line>` or `peer <addr>: error <why>`
//!   whenever that changes (with the unix time in ms), so the output stays short;
//! - the server prints `connection from <ip>` the first time a source connects;
//! - `HELLO_SINK_PORT`: reads a connection to its end, then writes the byte count;
//! - `HELLO_ECHO_PORT`: writes back every byte it reads;
//! - `HELLO_BENCH=ip:sink,ip:echo;...`: once, for each pair, 1000 one-byte round
//!   trips and 16 MiB into the sink, printing `bench <ip> rtt_us=<mean> mbps=<rate>`.

mod mesh;

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users").unwrap_or_else(|| "?".into());
    let region = arg(&args, "--region").unwrap_or_else(|| "?".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let greeting = format!("hello from {host}: serving {users} users in region {region}");
    println!("{greeting}");

    if let Ok(dir) = std::env::var("HELLO_DATA") {
        let path = std::path::Path::new(&dir).join("hello.log");
        let line = format!("{now} {greeting}\n");
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_all()))
        {
            Ok(()) => println!("wrote to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }

    if let Ok(port) = std::env::var("HELLO_PORT") {
        let addr = format!("0.0.0.0:{port}");
        match TcpListener::bind(&addr) {
            Ok(listener) => {
                println!("listening on {addr}");
                let reply = format!("{greeting}\n");
                std::thread::spawn(move || mesh::serve_lines(listener, reply));
            }
            Err(e) => eprintln!("cannot listen on {addr}: {e}"),
        }
    }

    // A copy asking its peers prints their changes instead of a heartbeat: the status
    // keeps the last lines only, and those are the ones worth keeping.
    let quiet = mesh::start_from_env();

    let mut beats = 0u64;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        beats += 1;
        if !quiet {
            println!("still here ({beats})");
        }
    }
}
