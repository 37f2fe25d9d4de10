//! The default seccomp profile: an allow-list. Every system call not named here fails
//! with `EPERM`.
//!
//! Modelled on the shape of Docker's default profile (allow what ordinary programs use,
//! refuse the rest with an error, not a kill) but written for zosd and stricter where
//! Docker keys a call to a capability we never grant: there is no `CAP_SYS_ADMIN`,
//! `CAP_SYS_PTRACE`, `CAP_SYS_MODULE`, `CAP_SYS_TIME`, `CAP_SYS_BOOT`, `CAP_BPF` ... in a
//! workload, so none of the calls those unlock is in the list.
//!
//! Left out on purpose (they fail with `EPERM`): namespaces (`unshare`, `setns`, `clone`
//! with any `CLONE_NEW*` flag), the mount API (`mount`, `umount2`, `pivot_root`,
//! `open_tree`, `move_mount`, `fs*`, `mount_setattr`), `io_uring_*`, `userfaultfd`, `bpf`,
//! `perf_event_open`, `ptrace`, `process_vm_*`, `kcmp`, `pidfd_getfd`, `kexec_*`,
//! `*_module`, `reboot`, `swapon/off`, `acct`, the keyring (`keyctl`, `add_key`,
//! `request_key`), the clock (`settimeofday`, `clock_settime`, `adjtimex`, ...), file handles
//! (`name_to_handle_at`, `open_by_handle_at`), `fanotify_*`, `quotactl`, `lookup_dcookie`,
//! `syslog`, `vhangup`, `ioperm/iopl`, `modify_ldt`, NUMA policy calls, `personality` except
//! the plain Linux personalities, `sethostname` (the UTS name is set by the runtime).
//!
//! `clone3` fails with `ENOSYS`, not `EPERM`: its flags are in memory a seccomp filter
//! cannot read, and libc falls back to `clone` on `ENOSYS`, whose flags it can.
//!
//! Only the native architecture is in the filter: a 32-bit (`int 0x80`) or x32 system
//! call is a "bad architecture" and kills the process (workload binaries are 64-bit).
//!
//! Every name here is known to libseccomp 2.5.4 (Debian 12's, linked into zosd): for a
//! name it cannot resolve, libcontainer logs a WARN from the container's init, after its
//! stdio became the workload's, so the line lands in the workload's stderr log (seen with
//! `getxattrat`, `setxattrat`, `listxattrat`, `removexattrat`, `mseal`, `uretprobe`: left
//! out, so they fail with `EPERM` like any call newer than the library).

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder,
};

use crate::error::Error;

/// Allowed without conditions.
pub const ALLOWED_SYSCALLS: &[&str] = &[
    // Files: open, read, write, position, duplicate, control.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "open",
    "openat",
    "openat2",
    "creat",
    "close",
    "close_range",
    "lseek",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "fcntl",
    "ioctl",
    "flock",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "truncate",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "readahead",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "cachestat",
    // Metadata and the tree.
    "stat",
    "fstat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "access",
    "faccessat",
    "faccessat2",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "utime",
    "utimes",
    "utimensat",
    "futimesat",
    "getdents",
    "getdents64",
    "readlink",
    "readlinkat",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "rmdir",
    // FIFOs and sockets; a device node needs CAP_MKNOD, which no workload has.
    "mknod",
    "mknodat",
    "umask",
    "chdir",
    "fchdir",
    "getcwd",
    "chroot",
    // Extended attributes.
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    // Waiting for events.
    "select",
    "pselect6",
    "poll",
    "ppoll",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // Memory.
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "mincore",
    "msync",
    "membarrier",
    "memfd_create",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    "map_shadow_stack",
    // Processes and threads (clone is below, with its flags checked).
    "fork",
    "vfork",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_send_signal",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getpgrp",
    "getsid",
    "setsid",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "futex",
    "futex_waitv",
    "futex_wake",
    "futex_wait",
    "futex_requeue",
    "rseq",
    "arch_prctl",
    "prctl",
    "seccomp",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    // Credentials (within what the capability set allows).
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "getresuid",
    "getresgid",
    "setfsuid",
    "setfsgid",
    "getgroups",
    "setgroups",
    "capget",
    "capset",
    // Scheduling and limits.
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_getattr",
    "sched_setattr",
    "getpriority",
    "setpriority",
    "ioprio_get",
    "ioprio_set",
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "getrusage",
    "times",
    "sysinfo",
    "uname",
    "getcpu",
    "getrandom",
    // Signals and timers.
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "sigaltstack",
    "alarm",
    "pause",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_delete",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "restart_syscall",
    // Clocks (reading and sleeping only).
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "time",
    // Sockets.
    "socket",
    "socketpair",
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    "setsockopt",
    "getsockopt",
    // System V and POSIX IPC (the container's own IPC namespace).
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    // Classic asynchronous I/O (io_uring is not allowed).
    "io_setup",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_submit",
    "io_cancel",
];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: `clone` is allowed only when none of these is set.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `personality` values allowed: `PER_LINUX` (0), `UNAME26` (0x8), `ADDR_NO_RANDOMIZE`
/// (0x20000) and both (0x20008), and the query `0xffffffff`.
pub const ALLOWED_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

fn allow(names: &[&str]) -> Result<oci_spec::runtime::LinuxSyscall, Error> {
    Ok(LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?)
}

/// The profile in OCI form, for libcontainer 0.7.
///
/// Note on `SCMP_CMP_MASKED_EQ`: libcontainer 0.7 reads `valueTwo` as the mask and `value`
/// as the value the masked argument must equal (runc reads them the other way round). The
/// clone rule is written for libcontainer: `value = 0`, `valueTwo = CLONE_NAMESPACE_FLAGS`,
/// i.e. `(flags & CLONE_NAMESPACE_FLAGS) == 0`; the attack tests prove it from inside a
/// container (a namespace clone is refused, a plain fork works).
pub fn default_profile() -> Result<LinuxSeccomp, Error> {
    let mut rules = vec![allow(ALLOWED_SYSCALLS)?];
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(0u64)
                .value_two(CLONE_NAMESPACE_FLAGS)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?])
            .build()?,
    );
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()?,
    );
    for &p in ALLOWED_PERSONALITIES {
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["personality".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(p)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()?])
                .build()?,
        );
    }
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .syscalls(rules)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_has_no_escape_hatch_and_no_duplicates() {
        for denied in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "open_tree",
            "move_mount",
            "fsopen",
            "mount_setattr",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "userfaultfd",
            "bpf",
            "perf_event_open",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "pidfd_getfd",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "keyctl",
            "add_key",
            "request_key",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "name_to_handle_at",
            "open_by_handle_at",
            "fanotify_init",
            "quotactl",
            "syslog",
            "iopl",
            "ioperm",
            "modify_ldt",
            "sethostname",
            "clone",
            "clone3",
            "personality",
        ] {
            assert!(
                !ALLOWED_SYSCALLS.contains(&denied),
                "{denied} is unconditionally allowed"
            );
        }
        let mut sorted = ALLOWED_SYSCALLS.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        sorted.dedup();
        assert_eq!(sorted.len(), n, "duplicate names");
    }

    #[test]
    fn profile_denies_by_default_and_checks_clone_flags() {
        let json = serde_json::to_value(default_profile().unwrap()).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], libc::EPERM);
        let rules = json["syscalls"].as_array().unwrap();
        let clone = rules.iter().find(|r| r["names"][0] == "clone").unwrap();
        assert_eq!(clone["action"], "SCMP_ACT_ALLOW");
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], 0);
        assert_eq!(clone["args"][0]["valueTwo"], CLONE_NAMESPACE_FLAGS);
        let clone3 = rules.iter().find(|r| r["names"][0] == "clone3").unwrap();
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], libc::ENOSYS);
        // Every CLONE_NEW* flag is in the mask.
        for f in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ] {
            assert_ne!(CLONE_NAMESPACE_FLAGS & f as u64, 0);
        }
    }
}
