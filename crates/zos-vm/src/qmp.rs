//! A QMP client: QEMU's JSON control protocol over the VM's private unix socket. One
//! command at a time; asynchronous events on the way are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// A connection to one QEMU's QMP socket, past the greeting and capability
/// negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn qmp_err(command: &str, message: impl ToString) -> Error {
    Error::Qmp {
        command: command.to_string(),
        message: message.to_string(),
    }
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = UnixStream::connect(socket).map_err(|e| qmp_err("connect", e))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| qmp_err("connect", e))?;
        let writer = stream.try_clone().map_err(|e| qmp_err("connect", e))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_err(
                "greeting",
                format!("not a QMP greeting: {greeting}"),
            ));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self, command: &str) -> Result<Value> {
        let mut line = String::new();
        // A QMP reply is one line; a runaway peer cannot make us buffer without bound.
        let n = std::io::Read::take(&mut self.reader, 1 << 20)
            .read_line(&mut line)
            .map_err(|e| qmp_err(command, e))?;
        if n == 0 {
            return Err(qmp_err(command, "QEMU closed the socket"));
        }
        serde_json::from_str(&line).map_err(|e| qmp_err(command, format!("bad reply: {e}")))
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| qmp_err(command, e))?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|e| qmp_err(command, e))?;
        loop {
            let reply = self.read_message(command)?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let desc = err["desc"].as_str().unwrap_or("no description");
                return Err(qmp_err(command, desc));
            }
            // {"event": ...}: not ours to answer.
        }
    }

    /// The run state QEMU reports: "running", "paused", "shutdown", ...
    pub fn status(&mut self) -> Result<String> {
        let ret = self.execute("query-status", None)?;
        ret["status"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| qmp_err("query-status", format!("no status in {ret}")))
    }
}
