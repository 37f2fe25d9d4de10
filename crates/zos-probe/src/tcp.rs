//! TCP connect: connected, refused, unreachable or timed out, and how long it took.

use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::{left, ms, Outcome, ProbeError};

pub(crate) fn connect(addr: SocketAddr, deadline: Instant) -> Outcome {
    let Some(budget) = left(deadline) else {
        return Outcome::failed(vec![], ProbeError::io("connect")(timed_out()));
    };
    let t = Instant::now();
    match TcpStream::connect_timeout(&addr, budget) {
        Ok(s) => {
            // Closed at once: nothing is sent or read.
            drop(s);
            Outcome {
                ok: true,
                lines: vec![format!("connected to {addr} in {}", ms(t.elapsed()))],
                error: None,
            }
        }
        Err(e) => {
            let what = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused",
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out",
                _ => "failed",
            };
            Outcome::failed(
                vec![format!("{addr}: {what} after {}", ms(t.elapsed()))],
                ProbeError::io("connect")(e),
            )
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no time left")
}
