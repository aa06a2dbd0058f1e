/*
 * vsock_tool: a guest /init for the vsock tests, static against the kernel's nolibc.
 *
 * It runs the steps given on the kernel command line after "--", in order, prints one
 * "VSOCK <step> ..." line for each on the console, then "VSOCK-DONE" and reboots:
 *
 *   xfer PORT N        connect to the host (CID 2) PORT; send N pattern bytes while
 *                      reading; shut down writing; read to EOF; print sent, received and
 *                      the FNV-1a hash of what was received
 *   echo PORT          connect to the host PORT; write back whatever arrives, to EOF
 *   listen-echo PORT   listen on guest PORT, accept one connection, echo it to EOF
 *   readclose PORT K   connect, read K bytes, close with the host still sending
 *   many PORT COUNT    COUNT times: connect, send one byte, read its echo to EOF, close
 *   mountdev           mount devtmpfs on /dev (for the write step)
 *   write PATH N       write N pattern bytes to the file PATH (a virtio-console port)
 *
 * Pattern byte i is ((i * 131) ^ (i >> 9)) & 0xff.
 *
 * A step that wrote to a connection closes it lingering (close_delivered), so that what it
 * wrote has reached the host before the tool goes on, and at the end reboots.
 */

#define __NR_socket_   41
#define __NR_connect_  42
#define __NR_accept_   43
#define __NR_shutdown_ 48
#define __NR_bind_     49
#define __NR_listen_   50
#define __NR_setsockopt_ 54
#define AF_VSOCK_      40
#define SOCK_STREAM_   1
#define CID_HOST_      2
#define CID_ANY_       0xFFFFFFFFu
#define SHUT_WR_       1
#define SOL_SOCKET_    1
#define SO_LINGER_     13
#define LINGER_SECONDS 60
#define CHUNK          16384

struct sockaddr_vm_ {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};

struct linger_ {
	int l_onoff;
	int l_linger;
};

static unsigned char buf[CHUNK];
static unsigned char out[CHUNK];

static unsigned char pattern(unsigned long i)
{
	return ((i * 131) ^ (i >> 9)) & 0xff;
}

static void vm_addr(struct sockaddr_vm_ *a, unsigned int cid, unsigned int port)
{
	memset(a, 0, sizeof(*a));
	a->svm_family = AF_VSOCK_;
	a->svm_cid = cid;
	a->svm_port = port;
}

static long vsock_connect(unsigned int port)
{
	struct sockaddr_vm_ a;
	long fd = my_syscall3(__NR_socket_, AF_VSOCK_, SOCK_STREAM_, 0);
	long r;

	if (fd < 0)
		return fd;
	vm_addr(&a, CID_HOST_, port);
	r = my_syscall3(__NR_connect_, fd, &a, sizeof(a));
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/*
 * Close a connection once the host has what was written to it. A plain close() returns
 * with the last packets possibly still queued in the kernel for the vsock transmit worker;
 * on one CPU that worker may not run before the tool's reboot resets the device, and the
 * packets are lost although write() succeeded. Lingering, close() waits (at most
 * LINGER_SECONDS) for the host's reset that answers the shutdown, which the host sends
 * only after the data.
 */
static void close_delivered(long fd)
{
	struct linger_ l = { 1, LINGER_SECONDS };

	my_syscall5(__NR_setsockopt_, fd, SOL_SOCKET_, SO_LINGER_, &l, sizeof(l));
	close(fd);
}

static long write_all(int fd, const unsigned char *p, long n)
{
	long done = 0;

	while (done < n) {
		long w = write(fd, p + done, n - done);
		if (w <= 0)
			return w < 0 ? w : -1;
		done += w;
	}
	return done;
}

static int step_xfer(unsigned int port, unsigned long n)
{
	unsigned long sent = 0, recvd = 0;
	unsigned int fnv = 2166136261u;
	int writing = 1;
	long fd = vsock_connect(port);

	if (fd < 0) {
		printf("VSOCK xfer %u connect-failed %ld\n", port, fd);
		return 1;
	}
	if (n == 0) {
		my_syscall2(__NR_shutdown_, fd, SHUT_WR_);
		writing = 0;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN | (writing ? POLLOUT : 0) };
		if (poll(&p, 1, -1) < 0)
			break;
		if (writing && (p.revents & POLLOUT)) {
			unsigned long k, want = n - sent > CHUNK ? CHUNK : n - sent;
			long w;
			for (k = 0; k < want; k++)
				out[k] = pattern(sent + k);
			w = write(fd, out, want);
			if (w < 0) {
				printf("VSOCK xfer %u write-failed %ld\n", port, w);
				break;
			}
			sent += w;
			if (sent == n) {
				my_syscall2(__NR_shutdown_, fd, SHUT_WR_);
				writing = 0;
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			long r = read(fd, buf, sizeof(buf)), k;
			if (r <= 0)
				break;
			for (k = 0; k < r; k++)
				fnv = (fnv ^ buf[k]) * 16777619u;
			recvd += r;
		}
	}
	close_delivered(fd);
	printf("VSOCK xfer %u sent=%lu recv=%lu fnv=%x\n", port, sent, recvd, fnv);
	return 0;
}

static unsigned long echo(long fd)
{
	unsigned long total = 0;

	for (;;) {
		long r = read(fd, buf, sizeof(buf));
		if (r <= 0 || write_all(fd, buf, r) != r)
			break;
		total += r;
	}
	return total;
}

static int step_echo(unsigned int port)
{
	long fd = vsock_connect(port);
	unsigned long n;

	if (fd < 0) {
		printf("VSOCK echo %u connect-failed %ld\n", port, fd);
		return 1;
	}
	n = echo(fd);
	close_delivered(fd);
	printf("VSOCK echo %u bytes=%lu\n", port, n);
	return 0;
}

static int step_listen_echo(unsigned int port)
{
	struct sockaddr_vm_ a;
	long s = my_syscall3(__NR_socket_, AF_VSOCK_, SOCK_STREAM_, 0), fd;
	unsigned long n;

	vm_addr(&a, CID_ANY_, port);
	if (s < 0 || my_syscall3(__NR_bind_, s, &a, sizeof(a)) < 0 ||
	    my_syscall2(__NR_listen_, s, 1) < 0) {
		printf("VSOCK listen-echo %u listen-failed\n", port);
		return 1;
	}
	printf("VSOCK listening %u\n", port);
	fd = my_syscall3(__NR_accept_, s, 0, 0);
	if (fd < 0) {
		printf("VSOCK listen-echo %u accept-failed %ld\n", port, fd);
		return 1;
	}
	n = echo(fd);
	close_delivered(fd);
	close(s);
	printf("VSOCK listen-echo %u bytes=%lu\n", port, n);
	return 0;
}

static int step_readclose(unsigned int port, unsigned long k)
{
	unsigned long got = 0;
	long fd = vsock_connect(port);

	if (fd < 0) {
		printf("VSOCK readclose %u connect-failed %ld\n", port, fd);
		return 1;
	}
	while (got < k) {
		long r = read(fd, buf, k - got > CHUNK ? CHUNK : k - got);
		if (r <= 0)
			break;
		got += r;
	}
	close(fd);
	printf("VSOCK readclose %u read=%lu\n", port, got);
	return 0;
}

static int step_many(unsigned int port, unsigned long count)
{
	unsigned long i, ok = 0;

	for (i = 0; i < count; i++) {
		unsigned char c = 'a' + i % 26;
		long fd = vsock_connect(port), r;
		if (fd < 0)
			continue;
		if (write_all(fd, &c, 1) == 1) {
			r = read(fd, buf, 1);
			if (r == 1 && buf[0] == c && read(fd, buf, 1) == 0)
				ok++;
		}
		close(fd);
	}
	printf("VSOCK many %u count=%lu ok=%lu\n", port, count, ok);
	return 0;
}

static int step_write(const char *path, unsigned long n)
{
	unsigned long sent = 0, k;
	int fd = open(path, O_WRONLY, 0);

	if (fd < 0) {
		printf("VSOCK write %s open-failed %d\n", path, fd);
		return 1;
	}
	while (sent < n) {
		unsigned long want = n - sent > CHUNK ? CHUNK : n - sent;
		long w;
		for (k = 0; k < want; k++)
			out[k] = pattern(sent + k);
		w = write(fd, out, want);
		if (w <= 0)
			break;
		sent += w;
	}
	close(fd);
	printf("VSOCK write %s sent=%lu\n", path, sent);
	return 0;
}

int main(int argc, char **argv)
{
	int i = 1;

	printf("VSOCK-START\n");
	while (i < argc) {
		const char *s = argv[i];
		unsigned int port = i + 1 < argc ? atol(argv[i + 1]) : 0;
		unsigned long n = i + 2 < argc ? atol(argv[i + 2]) : 0;

		if (!strcmp(s, "xfer")) {
			step_xfer(port, n);
			i += 3;
		} else if (!strcmp(s, "echo")) {
			step_echo(port);
			i += 2;
		} else if (!strcmp(s, "listen-echo")) {
			step_listen_echo(port);
			i += 2;
		} else if (!strcmp(s, "readclose")) {
			step_readclose(port, n);
			i += 3;
		} else if (!strcmp(s, "mountdev")) {
			mkdir("/dev", 0755);
			if (mount("devtmpfs", "/dev", "devtmpfs", 0, 0) < 0)
				printf("VSOCK mountdev failed\n");
			i += 1;
		} else if (!strcmp(s, "write")) {
			step_write(argv[i + 1], n);
			i += 3;
		} else if (!strcmp(s, "many")) {
			step_many(port, n);
			i += 3;
		} else {
			printf("VSOCK unknown-step %s\n", s);
			i += 1;
		}
	}
	printf("VSOCK-DONE\n");
	reboot(LINUX_REBOOT_CMD_RESTART);
	return 0;
}
