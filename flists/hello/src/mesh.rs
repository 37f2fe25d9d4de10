//! The parts of `hello` that exercise a tenant network across nodes: a client of its
//! peers, a sink and an echo server, and a one-shot measurement (see the crate's doc).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one connection attempt or read may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The sink's payload in a measurement.
const BENCH_BYTES: usize = 16 << 20;
/// Round trips in a measurement: timed as one run, since a guest's clock may tick in
/// milliseconds (one round trip would read 0).
const BENCH_ROUND_TRIPS: u32 = 1000;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Answers every connection with `reply`, printing each new source address once.
pub fn serve_lines(listener: TcpListener, reply: String) {
    let mut seen = BTreeSet::<IpAddr>::new();
    for mut conn in listener.incoming().flatten() {
        if let Ok(peer) = conn.peer_addr() {
            if seen.insert(peer.ip()) {
                println!("connection from {} at {}", peer.ip(), now_ms());
            }
        }
        let _ = conn.write_all(reply.as_bytes());
    }
}

/// Starts what the environment asks for (each on its own thread); true when it watches
/// peers.
pub fn start_from_env() -> bool {
    if let Some(port) = env_port("HELLO_SINK_PORT") {
        listen(port, "sink", sink);
    }
    if let Some(port) = env_port("HELLO_ECHO_PORT") {
        listen(port, "echo", echo);
    }
    // Empty values are a blueprint's defaults: nothing to do.
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(spec) = set("HELLO_BENCH") {
        std::thread::spawn(move || bench_all(&spec));
    }
    let Some(list) = set("HELLO_PEERS") else {
        return false;
    };
    let peers: Vec<SocketAddr> = list.split(',').filter_map(|p| p.parse().ok()).collect();
    let marker = std::env::var("HELLO_MARKER").unwrap_or_default();
    std::thread::spawn(move || watch_peers(peers, marker));
    true
}

fn env_port(name: &str) -> Option<u16> {
    std::env::var(name).ok()?.parse().ok()
}

fn listen(port: u16, what: &'static str, handle: fn(TcpStream)) {
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => {
            println!("{what} listening on 0.0.0.0:{port}");
            std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    std::thread::spawn(move || handle(conn));
                }
            });
        }
        Err(e) => eprintln!("cannot listen on 0.0.0.0:{port} ({what}): {e}"),
    }
}

/// Reads to the end, then writes the byte count.
fn sink(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let _ = conn.write_all(format!("{total}\n").as_bytes());
}

/// Writes back every byte.
fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// One attempt: connect, send the marker, read the peer's line.
fn ask(peer: SocketAddr, marker: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect_timeout(&peer, TIMEOUT).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    if !marker.is_empty() {
        conn.write_all(marker.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 {
        match conn.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    if line.is_empty() {
        return Err("closed without a line".into());
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Asks every peer every second; prints a line when a peer's outcome changes.
fn watch_peers(peers: Vec<SocketAddr>, marker: String) {
    let mut last: Vec<Option<bool>> = vec![None; peers.len()];
    loop {
        for (i, peer) in peers.iter().enumerate() {
            let outcome = ask(*peer, &marker);
            if last[i] != Some(outcome.is_ok()) {
                last[i] = Some(outcome.is_ok());
                match outcome {
                    Ok(l) => println!("peer {peer}: ok {l} at {}", now_ms()),
                    Err(e) => println!("peer {peer}: error {e} at {}", now_ms()),
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `ip:sink,ip:echo;...`: measures each pair once, retrying until it can connect.
fn bench_all(spec: &str) {
    for pair in spec.split(';') {
        let mut it = pair.split(',').filter_map(|p| p.parse::<SocketAddr>().ok());
        let (Some(sink), Some(echo)) = (it.next(), it.next()) else {
            eprintln!("HELLO_BENCH: {pair:?} is not ip:sink,ip:echo");
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match bench(sink, echo) {
                Ok((rtt_us, mbps)) => {
                    println!("bench {} rtt_us={rtt_us:.1} mbps={mbps:.1}", sink.ip());
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    println!("bench {} error {e}", sink.ip());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

/// The mean round trip of one byte in microseconds, and the sink's rate in Mbit/s.
fn bench(sink: SocketAddr, echo: SocketAddr) -> Result<(f64, f64), String> {
    let e = |x: std::io::Error| x.to_string();
    let mut conn = TcpStream::connect_timeout(&echo, TIMEOUT).map_err(e)?;
    conn.set_nodelay(true).map_err(e)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(e)?;
    let mut byte = [0u8; 1];
    let t = Instant::now();
    for _ in 0..BENCH_ROUND_TRIPS {
        conn.write_all(b"x").map_err(e)?;
        conn.read_exact(&mut byte).map_err(e)?;
    }
    let rtt = t.elapsed().as_secs_f64() * 1e6 / f64::from(BENCH_ROUND_TRIPS);

    let mut conn = TcpStream::connect_timeout(&sink, TIMEOUT).map_err(e)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(e)?;
    let chunk = vec![0x5au8; 64 << 10];
    let t = Instant::now();
    let mut sent = 0;
    while sent < BENCH_BYTES {
        conn.write_all(&chunk).map_err(e)?;
        sent += chunk.len();
    }
    conn.shutdown(std::net::Shutdown::Write).map_err(e)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(e)?;
    let secs = t.elapsed().as_secs_f64();
    if reply.trim() != sent.to_string() {
        return Err(format!("the sink counted {:?}, {sent} sent", reply.trim()));
    }
    Ok((rtt, sent as f64 * 8.0 / secs / 1e6))
}
