//! Watching a node from outside, as the demo and the end-to-end tests do: polling
//! something (a status record, a serial console) until it says what is awaited, and
//! reading a workload's log tail out of a status record.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Reads with `read` every `every` until `done` holds of what it read, for at most
/// `timeout`. `Ok` with the reading that satisfied it, `Err` with the last one.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> Result<T, T> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = read();
        if done(&seen) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            return Err(seen);
        }
        std::thread::sleep(every);
    }
}

/// The newest log lines of `workload` in a status record (`zos contract status
/// --json`); none when the record has none.
pub fn log_tail(status: &Value, workload: &str) -> Vec<String> {
    status["workloads"][workload]["log_tail"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_returns_the_reading_that_satisfied_or_the_last_one() {
        let mut n = 0;
        let got = poll_until(
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                n
            },
            |n| *n == 3,
        );
        assert_eq!(got, Ok(3));
        let got = poll_until(Duration::ZERO, Duration::ZERO, || 7, |_| false);
        assert_eq!(got, Err(7));
    }

    #[test]
    fn a_log_tail_out_of_a_status_record() {
        let s = serde_json::json!({"workloads": {"app": {"log_tail": ["a", "b"]}}});
        assert_eq!(log_tail(&s, "app"), vec!["a", "b"]);
        assert!(log_tail(&s, "db").is_empty());
        assert!(log_tail(&Value::Null, "app").is_empty());
    }
}
