/* zt-probe: one syscall at a time from inside a test container, for the attack tests
 * (crates/zos-container/tests/attack.rs). Built static by the test with the host's gcc.
 * Prints "<what>: ok" or "<what>: errno <NAME>" per attempt; never asserts anything.
 * A test tool only: it never goes into an image or a flist. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int report(const char *what, long r)
{
	if (r < 0) {
		printf("%s: errno %s\n", what, strerrorname_np(errno));
		return 1;
	}
	printf("%s: ok\n", what);
	return 0;
}

/* Raw clone with namespace flags (no glibc wrapper: the filter sees the flags word). */
static void clone_with(const char *what, unsigned long flags)
{
	long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid((pid_t)pid, 0, 0);
	report(what, pid);
}

static int unhex(const char *s, unsigned char *out, size_t max)
{
	size_t n = strlen(s) / 2;
	if (n > max)
		return -1;
	for (size_t i = 0; i < n; i++)
		sscanf(s + 2 * i, "%2hhx", &out[i]);
	return (int)n;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, 0, _IONBF, 0);
	for (int i = 1; i < argc; i++) {
		const char *c = argv[i];
		if (!strcmp(c, "clone-userns")) {
			clone_with(c, CLONE_NEWUSER);
		} else if (!strcmp(c, "clone-mntns")) {
			clone_with(c, CLONE_NEWNS);
		} else if (!strcmp(c, "clone-netns")) {
			clone_with(c, CLONE_NEWNET);
		} else if (!strcmp(c, "clone-thread")) {
			/* What fork() does: must keep working. */
			clone_with(c, 0);
		} else if (!strcmp(c, "clone3")) {
			struct { uint64_t flags, pidfd, child_tid, parent_tid, exit_signal,
				 stack, stack_size, tls; } a = { .flags = CLONE_NEWUSER,
								 .exit_signal = SIGCHLD };
			long pid = syscall(SYS_clone3, &a, sizeof a);
			if (pid == 0)
				_exit(0);
			if (pid > 0)
				waitpid((pid_t)pid, 0, 0);
			report(c, pid);
		} else if (!strcmp(c, "unshare-userns")) {
			report(c, unshare(CLONE_NEWUSER));
		} else if (!strcmp(c, "unshare-mntns")) {
			report(c, unshare(CLONE_NEWNS));
		} else if (!strcmp(c, "setns")) {
			int fd = open("/proc/self/ns/net", O_RDONLY);
			report(c, fd < 0 ? fd : setns(fd, 0));
		} else if (!strcmp(c, "io_uring_setup")) {
			unsigned char params[120] = { 0 };
			report(c, syscall(SYS_io_uring_setup, 4, params));
		} else if (!strcmp(c, "userfaultfd")) {
			report(c, syscall(SYS_userfaultfd, 0));
		} else if (!strcmp(c, "bpf")) {
			unsigned char attr[128] = { 0 };
			report(c, syscall(SYS_bpf, 0, attr, sizeof attr));
		} else if (!strcmp(c, "perf_event_open")) {
			unsigned char attr[128] = { 0 };
			report(c, syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
		} else if (!strcmp(c, "keyctl")) {
			report(c, syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -4, 0));
		} else if (!strcmp(c, "name_to_handle_at")) {
			unsigned char buf[sizeof(struct file_handle) + 128];
			struct file_handle *fh = (struct file_handle *)buf;
			int mnt;
			fh->handle_bytes = 128;
			report(c, name_to_handle_at(AT_FDCWD, "/", fh, &mnt, 0));
		} else if (!strcmp(c, "handle-of") && i + 1 < argc) {
			/* On the host: "<type> <hex>" of a file's handle, for open_by_handle_at. */
			unsigned char buf[sizeof(struct file_handle) + 128];
			struct file_handle *fh = (struct file_handle *)buf;
			int mnt;
			fh->handle_bytes = 128;
			if (name_to_handle_at(AT_FDCWD, argv[++i], fh, &mnt, 0) < 0) {
				report(c, -1);
				return 1;
			}
			printf("%d ", fh->handle_type);
			for (unsigned j = 0; j < fh->handle_bytes; j++)
				printf("%02x", fh->f_handle[j]);
			printf("\n");
		} else if (!strcmp(c, "open_by_handle_at") && i + 2 < argc) {
			/* open_by_handle_at TYPE HEX: the host computed the handle of a file outside
			 * the container (an attacker guesses inode numbers); print what it reads. */
			unsigned char buf[sizeof(struct file_handle) + 128];
			struct file_handle *fh = (struct file_handle *)buf;
			fh->handle_type = atoi(argv[++i]);
			int n = unhex(argv[++i], fh->f_handle, 128);
			fh->handle_bytes = n < 0 ? 0 : (unsigned)n;
			int root = open("/", O_RDONLY | O_DIRECTORY);
			int fd = root < 0 ? root : open_by_handle_at(root, fh, O_RDONLY);
			if (report(c, fd) == 0) {
				char data[256];
				ssize_t r = read(fd, data, sizeof data - 1);
				if (r > 0) {
					data[r] = 0;
					printf("read: %s\n", data);
				}
			}
		} else {
			printf("%s: unknown probe\n", c);
		}
	}
	return 0;
}
