//! Every name in the seccomp allow-list resolves in the linked libseccomp. For a name it
//! cannot resolve, libcontainer logs a WARN from the container's init after its stdio
//! became the workload's, so with a subscriber on stderr (as zosd's `runtime-create` has)
//! the line lands in the workload's own stderr log. One test in its own binary: the
//! subscriber is process-wide.

mod common;

use common::*;
use zos_container::{log_tail, Exit, Runtime, Stream};

#[test]
fn no_seccomp_name_is_unknown_and_no_runtime_line_reaches_the_workload() {
    let test = "no_seccomp_name_is_unknown_and_no_runtime_line_reaches_the_workload";
    if !privileged(test) {
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let fx = Fixture::new();
    // Stays up until its stderr was read: the FIFO's content goes with its last holder.
    let spec = fx.sh("echo workload-line >&2; echo END; sleep 600");
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    let stderr = eventually("the workload's stderr line", || {
        let lines = log_tail(&spec.log_dir, Stream::Stderr, 100).unwrap();
        lines.iter().any(|l| l == "workload-line").then_some(lines)
    });
    assert_eq!(
        stderr,
        ["workload-line"],
        "the runtime wrote into the workload's stderr"
    );
    fx.rt
        .kill(&spec.id, zos_container::Signal::SIGKILL)
        .unwrap();
    assert_eq!(
        c.exit.wait_blocking(WAIT),
        Some(Exit::Signal(zos_container::Signal::SIGKILL as i32))
    );
}
