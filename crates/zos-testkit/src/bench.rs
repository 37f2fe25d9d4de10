//! What the benchmarks (`cargo xtask bench`) share: knobs from the environment and
//! the figures they print.

use std::time::Duration;

/// The value of environment variable `name` (a bench's knob, e.g. how many contracts),
/// or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `d` in milliseconds, as printed.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0.5: p50, 0.95: p95) of `v`, which it sorts. `v` must not be
/// empty.
pub fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}
