/*
 * vmboot-agent: runs commands in a guest for the host, one after another, over one byte
 * stream (a virtio-console port, a vsock connection, or an inherited fd).
 *
 * Built static against the Linux kernel's tools/include/nolibc (no libc): see build.py.
 * Wire format (protocol.py is its other half): every frame is
 *     u32 length (little endian, of what follows) | u8 type | payload
 * host -> agent:  'E' exec  (u32 argc, u32 envc, cwd\0, argv\0..., env\0...)
 *                 'I' stdin data, 'i' stdin end, 'K' signal (u32 signo)
 *                 'T' resumed (u64 seconds, u32 nanoseconds of the host's wall time, then
 *                     random bytes): sent right after a snapshot restore
 *                 'W' park (u64 TSC cycles to wait at most): wait for the next frames in
 *                     the mailbox (below), to be saved so (sent alone, no command running)
 * agent -> host:  't' resumed (u32 errno of RNDADDENTROPY, of RNDRESEEDCRNG, of
 *                     clock_settime, 0 each when done; the version text; a NUL, u64 TSC
 *                     cycles since the read that brought 'T', u32 bytes it brought behind)
 *                 'w' parked (u64 guest-physical address of the mailbox, u32 errno: the
 *                     address is 0 when the agent cannot say where the page is)
 *                 'R' ready (version text), 'F' failed (u32 errno, text),
 *                 'P' started (u32 pid, u32 output: 0 through pipes and 'O'/'e' frames,
 *                     1 straight to the output ports),
 *                 'O' stdout data, 'e' stderr data, 'A' stdin consumed (u32 bytes),
 *                 'X' exited (u32 kind: 0 status, 1 signal; u32 value)
 * Stdin is credit-based: the host keeps at most STDIN_WINDOW bytes unacknowledged, so the agent
 * can always read the channel (a signal is never stuck behind stdin the command does not read).
 *
 * Output ports: when the channel is the virtio-console port NAME and ports NAME.stdout and
 * NAME.stderr exist too, the agent opens each once at start and every command gets them as
 * its fd 1 and 2 (it inherits the agent's open file: a port can be opened only once), so
 * its output reaches the host with no copy through the agent. The guest queues those
 * buffers before the agent writes 'X', and the host takes every buffer already queued on
 * the output ports before it reads the control port's next message. Otherwise (vsock,
 * an fd, no such ports) output crosses pipes and comes back as 'O'/'e' frames.
 *
 * The mailbox: one page of the agent's memory the host writes directly. On 'W' the agent
 * answers with the page's guest-physical address (from /proc/self/pagemap, which needs
 * CAP_SYS_ADMIN) and then spins in user mode reading the page for at most the cycles the
 * host gave before it goes back to its channel. The host saves the guest meanwhile. After a
 * restore, before the guest runs again, the host writes the frames it would have sent first
 * (the resume message and a command) into the page, so the agent holds them without any work
 * of the guest kernel (an interrupt, a wakeup, a read). Layout: u32 state (MAILBOX_PARKED
 * while the agent may still look there; the host writes nothing otherwise), u32 length of
 * the frames that follow. The agent clears the state before its last look, so a guest saved
 * after it gave up is never written to; the host clears it to let the agent go at once (the
 * guest it saved runs on, or a restored guest runs for the first time).
 *
 * As PID 1 it mounts /proc, /sys, /dev and /tmp first, then a tmpfs on each directory of
 * vmboot.agent.tmpfs=DIR,DIR... (the writable places when the root is read-only, such as the
 * host's own root over virtio-fs), and takes its channel from the kernel command line
 * (vmboot.agent=port:NAME | vsock:PORT | PATH); otherwise from --fd N or argv[1].
 */

#define AGENT_VERSION "vmboot-agent 5"

#define STDOUT_PORT_SUFFIX ".stdout"
#define STDERR_PORT_SUFFIX ".stderr"

#define FRAME_MAX   (64 * 1024)
#define PIPE_CHUNK  (32 * 1024)
#define STDIN_MAX   (256 * 1024)
#define ARGS_MAX    256

#define __NR_pipe2_      293
#define __NR_signalfd4_  289
#define __NR_rt_sigprocmask_ 14
#define __NR_rt_sigaction_ 13
#define __NR_socket_     41
#define __NR_connect_    42
#define __NR_nanosleep_  35
#define __NR_fcntl_      72
#define __NR_ioctl_      16
#define __NR_clock_settime_ 227
#define __NR_mlock_      149
#define CLOCK_REALTIME_  0
/* include/uapi/linux/random.h: _IOW('R', 0x03, int[2]) and _IO('R', 0x07) */
#define RNDADDENTROPY_   0x40085203
#define RNDRESEEDCRNG_   0x5207
#define SEED_MAX         512
#define F_SETFD_ 2
#define F_SETFL_ 4
#define FD_CLOEXEC_ 1
#define LINUX_REBOOT_CMD_POWER_OFF_ 0x4321fedc
#define O_NONBLOCK_  04000
#define O_CLOEXEC_   02000000
#define SFD_NONBLOCK_ 04000
#define SFD_CLOEXEC_  02000000
#define SIGCHLD_ 17
#define SIGPIPE_ 13
#define SIG_BLOCK_ 0
#define SIG_UNBLOCK_ 1
#define AF_VSOCK_ 40
#define SOCK_STREAM_ 1
#define VMADDR_CID_HOST_ 2
#define EAGAIN_ 11
#define EINTR_ 4
#define EIO_ 5
#define EBUSY_ 16
#define ENXIO_ 6

#define PAGE_SIZE_     4096
#define MAILBOX_SIZE   PAGE_SIZE_  /* one page: its address is all the host needs */
#define MAILBOX_HEAD   8
#define MAILBOX_PARKED 1
#define PAGEMAP_PRESENT (1UL << 63)
#define PAGEMAP_PFN     ((1UL << 55) - 1)

struct sockaddr_vm_ {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};

struct timespec_ { long tv_sec; long tv_nsec; };
struct ksigaction_ { unsigned long handler, flags, restorer, mask; };

static int chan = -1;
static int out_port = -1, err_port = -1;  /* the output ports, when the host offers them */
static unsigned char inbuf[FRAME_MAX + 8];
static unsigned int inlen;
static unsigned long read_at;  /* the TSC when the last read from the host returned */
/* u32 state, u32 length, then frames: written by the host into guest memory (see the top) */
static volatile unsigned int mailbox[MAILBOX_SIZE / 4] __attribute__((aligned(MAILBOX_SIZE)));

static unsigned long rdtsc_(void)
{
	unsigned int lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((unsigned long)hi << 32) | lo;
}
static unsigned char outbuf[PIPE_CHUNK + 16];
static unsigned char stdin_buf[STDIN_MAX];
static unsigned int stdin_len;
static int stdin_end_wanted;
static char *exec_argv[ARGS_MAX + 1];
static char *exec_envp[ARGS_MAX + 1];

static long sys_pipe2_(int *fds, int flags) { return my_syscall2(__NR_pipe2_, fds, flags); }
static long sigmask_(int how, unsigned long *set) { return my_syscall4(__NR_rt_sigprocmask_, how, set, 0, 8); }
static long fcntl_(int fd, int cmd, long arg) { return my_syscall3(__NR_fcntl_, fd, cmd, arg); }
static long ioctl_(int fd, unsigned long req, void *arg) { return my_syscall3(__NR_ioctl_, fd, req, arg); }
/* A command starts with every signal's default action, whatever the agent inherited: a
 * signal ignored by whoever started the agent would otherwise stay ignored (and a shell
 * command could not trap it). */
static void default_signals_(void)
{
	struct ksigaction_ dfl = {0, 0, 0, 0};
	int s;

	for (s = 1; s <= 64; s++)
		if (s != 9 && s != 19)  /* SIGKILL and SIGSTOP cannot be changed */
			my_syscall4(__NR_rt_sigaction_, s, &dfl, 0, 8);
}

static long signalfd_(unsigned long *mask) { return my_syscall4(__NR_signalfd4_, -1, mask, 8, SFD_NONBLOCK_ | SFD_CLOEXEC_); }

static void put_u32(unsigned char *p, unsigned int v)
{
	p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static unsigned int get_u32(const unsigned char *p)
{
	return p[0] | (p[1] << 8) | (p[2] << 16) | ((unsigned int)p[3] << 24);
}

static int write_all(int fd, const void *buf, unsigned int n)
{
	const char *p = buf;

	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR_)
				continue;
			return -1;
		}
		p += w;
		n -= w;
	}
	return 0;
}

static void send_frame(char type, const void *payload, unsigned int n)
{
	unsigned char head[5];

	put_u32(head, n + 1);
	head[4] = type;
	if (write_all(chan, head, 5) || (n && write_all(chan, payload, n)))
		exit(3);  /* the host is gone: nothing more to do */
}

static void send_u32s(char type, unsigned int a, unsigned int b, int two)
{
	unsigned char p[8];

	put_u32(p, a);
	put_u32(p + 4, b);
	send_frame(type, p, two ? 8 : 4);
}

static void append(char *dst, const char *src)
{
	strcpy(dst + strlen(dst), src);
}

static int has_prefix(const char *s, const char *prefix)
{
	return !strncmp(s, prefix, strlen(prefix));
}

static void sleep_ms(long ms)
{
	struct timespec_ ts = { ms / 1000, (ms % 1000) * 1000000L };
	my_syscall2(__NR_nanosleep_, &ts, 0);
}

/* /sys/class/virtio-ports/vportNpM/name holds a port's name; its device is /dev/vportNpM. */
static int open_named_port(const char *name, int flags)
{
	static char path[128], dev[64], got[64];
	char entries[2048];
	int dir = open("/sys/class/virtio-ports", 0x10000 /* O_DIRECTORY */, 0);
	int n, off;

	if (dir < 0)
		return -1;
	n = getdents64(dir, (void *)entries, sizeof(entries));
	close(dir);
	for (off = 0; off < n;) {
		struct linux_dirent64 *d = (void *)(entries + off);
		off += d->d_reclen;
		if (d->d_name[0] == '.')
			continue;
		strcpy(path, "/sys/class/virtio-ports/");
		append(path, d->d_name);
		append(path, "/name");
		int fd = open(path, O_RDONLY, 0);
		if (fd < 0)
			continue;
		int len = read(fd, got, sizeof(got) - 1);
		close(fd);
		if (len <= 0)
			continue;
		got[len] = 0;
		if (got[len - 1] == '\n')
			got[len - 1] = 0;
		if (!strcmp(got, name)) {
			strcpy(dev, "/dev/");
			append(dev, d->d_name);
			return open(dev, flags, 0);
		}
	}
	return -1;
}

static int open_vsock(unsigned int port)
{
	struct sockaddr_vm_ addr;
	long fd = my_syscall3(__NR_socket_, AF_VSOCK_, SOCK_STREAM_, 0);

	if (fd < 0)
		return -1;
	memset(&addr, 0, sizeof(addr));
	addr.svm_family = AF_VSOCK_;
	addr.svm_port = port;
	addr.svm_cid = VMADDR_CID_HOST_;
	if (my_syscall3(__NR_connect_, fd, &addr, sizeof(addr)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int open_channel(const char *spec)
{
	int tries;

	for (tries = 0; tries < 100; tries++) {  /* devices may still be probing: up to ~10 s */
		int fd;
		if (has_prefix(spec, "port:"))
			fd = open_named_port(spec + 5, O_RDWR);
		else if (has_prefix(spec, "vsock:"))
			fd = open_vsock(atoi(spec + 6));
		else
			fd = open(spec, O_RDWR, 0);
		if (fd >= 0)
			return fd;
		sleep_ms(100);
	}
	return -1;
}

/* NAME.stdout and NAME.stderr next to the control port NAME: both, or neither (pipes then).
 * The ports are announced together; their names may arrive a little after the control's. */
static void open_output_ports(const char *name)
{
	static char want[128];
	int tries;

	if (strlen(name) + sizeof(STDOUT_PORT_SUFFIX) > sizeof(want))
		return;
	for (tries = 0; tries < 5 && (out_port < 0 || err_port < 0); tries++) {
		if (tries)
			sleep_ms(20);
		if (out_port < 0) {
			strcpy(want, name);
			append(want, STDOUT_PORT_SUFFIX);
			out_port = open_named_port(want, O_WRONLY | O_CLOEXEC_);
		}
		if (err_port < 0) {
			strcpy(want, name);
			append(want, STDERR_PORT_SUFFIX);
			err_port = open_named_port(want, O_WRONLY | O_CLOEXEC_);
		}
	}
	if (out_port < 0 || err_port < 0) {
		if (out_port >= 0) close(out_port);
		if (err_port >= 0) close(err_port);
		out_port = err_port = -1;
	}
}

static const char *cmdline_value(const char *key)
{
	static char cmdline[4096];
	int fd = open("/proc/cmdline", O_RDONLY, 0);
	int n, i;
	size_t k = strlen(key);

	if (fd < 0)
		return 0;
	n = read(fd, cmdline, sizeof(cmdline) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	cmdline[n] = 0;
	for (i = 0; i < n; i++) {
		if ((i == 0 || cmdline[i - 1] == ' ') && !strncmp(cmdline + i, key, k)) {
			char *v = cmdline + i + k;
			char *e = v;
			while (*e && *e != ' ' && *e != '\n')
				e++;
			*e = 0;
			return v;
		}
	}
	return 0;
}

static void mount_tmpfs_list(void)
{
	const char *v = cmdline_value("vmboot.agent.tmpfs=");
	char dir[256];

	while (v && *v) {
		unsigned int n = 0;

		while (v[n] && v[n] != ',')
			n++;
		if (n > 0 && n < sizeof(dir)) {
			memcpy(dir, v, n);
			dir[n] = 0;
			mount("tmpfs", dir, "tmpfs", 0, "mode=1777");
		}
		v += n;
		if (*v == ',')
			v++;
	}
}

static void as_init(void)
{
	mkdir("/proc", 0555);
	mkdir("/sys", 0555);
	mkdir("/dev", 0755);
	mkdir("/tmp", 01777);
	mount("proc", "/proc", "proc", 0, 0);
	mount("sysfs", "/sys", "sysfs", 0, 0);
	mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
	mount("tmpfs", "/tmp", "tmpfs", 0, 0);
	mount_tmpfs_list();
}

/* ---------------------------------------------------------------- one command */
struct child {
	int pid;
	int in, out, err;  /* our ends; -1 when closed */
};

static void start(struct child *c, const unsigned char *p, unsigned int n)
{
	unsigned int argc, envc, i, pos = 8;
	int in[2], out[2] = { -1, -1 }, err[2] = { -1, -1 }, fail[2];
	int ports = out_port >= 0 && err_port >= 0;
	const char *cwd;

	if (n < 8)
		goto bad;
	argc = get_u32(p);
	envc = get_u32(p + 4);
	if (argc == 0 || argc > ARGS_MAX || envc > ARGS_MAX)
		goto bad;
	cwd = (const char *)p + pos;
	while (pos < n && p[pos]) pos++;
	pos++;
	for (i = 0; i < argc + envc; i++) {
		if (pos >= n)
			goto bad;
		if (i < argc)
			exec_argv[i] = (char *)p + pos;
		else
			exec_envp[i - argc] = (char *)p + pos;
		while (pos < n && p[pos]) pos++;
		pos++;
	}
	if (pos > n)
		goto bad;
	exec_argv[argc] = 0;
	exec_envp[envc] = 0;

	if (sys_pipe2_(in, O_CLOEXEC_) ||
	    (!ports && (sys_pipe2_(out, O_CLOEXEC_) || sys_pipe2_(err, O_CLOEXEC_))) ||
	    sys_pipe2_(fail, O_CLOEXEC_)) {
		send_u32s('F', errno, 0, 0);
		return;
	}
	/* only our ends are non-blocking: the command's stdout and stderr block as usual (a
	 * port's write blocks while the host has not taken the buffers queued before) */
	fcntl_(in[1], F_SETFL_, O_NONBLOCK_);
	if (!ports) {
		fcntl_(out[0], F_SETFL_, O_NONBLOCK_);
		fcntl_(err[0], F_SETFL_, O_NONBLOCK_);
	}
	c->pid = fork();
	if (c->pid == 0) {
		unsigned long blocked = (1UL << (SIGCHLD_ - 1)) | (1UL << (SIGPIPE_ - 1));
		sigmask_(SIG_UNBLOCK_, &blocked);
		default_signals_();
		setsid();
		dup2(in[0], 0);
		dup2(ports ? out_port : out[1], 1);
		dup2(ports ? err_port : err[1], 2);
		if (*cwd && chdir(cwd)) {
			int e = errno;
			write(fail[1], &e, sizeof(e));
			exit(127);
		}
		execve(exec_argv[0], exec_argv, exec_envp);
		{
			int e = errno;
			write(fail[1], &e, sizeof(e));
		}
		exit(127);
	}
	close(in[0]);
	if (!ports) {
		close(out[1]);
		close(err[1]);
	}
	close(fail[1]);
	if (c->pid < 0) {
		send_u32s('F', errno, 0, 0);
		close(in[1]); close(fail[0]);
		if (!ports) { close(out[0]); close(err[0]); }
		c->pid = 0;
		return;
	}
	{
		int e = 0;
		if (read(fail[0], &e, sizeof(e)) == sizeof(e)) {
			int status;
			close(fail[0]);
			wait4(c->pid, &status, 0, 0);
			c->pid = 0;
			close(in[1]);
			if (!ports) { close(out[0]); close(err[0]); }
			send_u32s('F', e, 0, 0);
			return;
		}
	}
	close(fail[0]);
	c->in = in[1];
	c->out = out[0];
	c->err = err[0];
	stdin_len = 0;
	stdin_end_wanted = 0;
	send_u32s('P', c->pid, ports, 1);
	return;
bad:
	send_u32s('F', 22 /* EINVAL */, 0, 0);
}

static void pump(int *fd, char type)
{
	for (;;) {
		ssize_t r = read(*fd, outbuf, PIPE_CHUNK);
		if (r > 0) {
			send_frame(type, outbuf, r);
			continue;
		}
		if (r == 0 || (errno != EAGAIN_ && errno != EINTR_)) {
			close(*fd);
			*fd = -1;
		}
		return;
	}
}

static void flush_stdin(struct child *c)
{
	while (c->in >= 0 && stdin_len) {
		ssize_t w = write(c->in, stdin_buf, stdin_len);
		if (w <= 0) {
			if (w < 0 && errno == EINTR_)
				continue;
			if (w < 0 && errno == EAGAIN_)
				return;  /* the pipe is full: poll says when it takes more */
			/* the command closed its stdin: drop what it will never read */
			send_u32s('A', stdin_len, 0, 0);
			stdin_len = 0;
			close(c->in);
			c->in = -1;
			return;
		}
		memmove(stdin_buf, stdin_buf + w, stdin_len - w);
		stdin_len -= w;
		send_u32s('A', w, 0, 0);
	}
	if (c->in >= 0 && !stdin_len && stdin_end_wanted) {
		close(c->in);
		c->in = -1;
	}
}

/*
 * After a restore: credit the host's random bytes to the input pool and reseed the CRNG
 * (drivers/char/random.c: RNDADDENTROPY mixes the buffer in and credits entropy_count
 * bits; RNDRESEEDCRNG makes every CPU's CRNG take a new key), then set the wall clock.
 */
/* The resume message: reseed, set the clock, answer with each step's errno, the version,
 * a NUL, the TSC cycles since the read that brought the message (a clock no restore or
 * clocksource can coarsen; the host knows its rate), and how many bytes that read brought
 * behind it (the host sends the first command with the message: the agent held it that
 * long before the answer). */
static void resumed(const unsigned char *p, unsigned int n, unsigned int behind)
{
	static struct { int entropy_count; int buf_size; unsigned char buf[SEED_MAX]; } pool;
	struct timespec_ ts;
	unsigned int errs[3] = { 22, 22, 22 };  /* EINVAL: a frame too short */
	long r;
	int fd;

	if (n >= 12 && n - 12 <= SEED_MAX) {
		ts.tv_sec = (long)(get_u32(p) | ((unsigned long)get_u32(p + 4) << 32));
		ts.tv_nsec = get_u32(p + 8);
		pool.entropy_count = (n - 12) * 8;
		pool.buf_size = n - 12;
		memcpy(pool.buf, p + 12, n - 12);
		fd = open("/dev/urandom", O_RDWR, 0);
		if (fd < 0) {
			errs[0] = errs[1] = errno;
		} else {
			r = ioctl_(fd, RNDADDENTROPY_, &pool);
			errs[0] = r < 0 ? -r : 0;
			r = ioctl_(fd, RNDRESEEDCRNG_, 0);
			errs[1] = r < 0 ? -r : 0;
			close(fd);
		}
		memset(&pool, 0, sizeof(pool));
		r = my_syscall2(__NR_clock_settime_, CLOCK_REALTIME_, &ts);
		errs[2] = r < 0 ? -r : 0;
	}
	{
		unsigned char out[12 + sizeof(AGENT_VERSION) + 12];
		unsigned int v = 12 + sizeof(AGENT_VERSION) - 1;
		unsigned long held = rdtsc_() - read_at;

		put_u32(out, errs[0]);
		put_u32(out + 4, errs[1]);
		put_u32(out + 8, errs[2]);
		memcpy(out + 12, AGENT_VERSION, sizeof(AGENT_VERSION) - 1);
		out[v] = 0;
		put_u32(out + v + 1, (unsigned int)held);
		put_u32(out + v + 5, (unsigned int)(held >> 32));
		put_u32(out + v + 9, behind);
		send_frame('t', out, v + 13);
	}
}

/* The mailbox page's guest-physical address (0 and *err when /proc/self/pagemap cannot say). */
static unsigned long mailbox_address(unsigned int *err)
{
	unsigned long entry = 0, va = (unsigned long)mailbox;
	int fd = open("/proc/self/pagemap", O_RDONLY, 0);

	if (fd < 0) {
		*err = errno;
		return 0;
	}
	if (lseek(fd, (long)(va / PAGE_SIZE_ * 8), SEEK_SET) < 0 || read(fd, &entry, 8) != 8)
		*err = errno ? errno : EIO_;
	close(fd);
	if (*err)
		return 0;
	if (!(entry & PAGEMAP_PRESENT) || !(entry & PAGEMAP_PFN)) {
		*err = ENXIO_;  /* not present, or the frame number hidden (no CAP_SYS_ADMIN) */
		return 0;
	}
	return (entry & PAGEMAP_PFN) * PAGE_SIZE_;
}

/* 'W': answer where the mailbox is, then wait there (see the top); frames found in it are
 * taken as if read from the channel. */
static void park(const struct child *c, const unsigned char *p, unsigned int len)
{
	unsigned char out[12];
	unsigned int err = 0, n;
	unsigned long where = 0, until;

	if (c->pid) {
		err = EBUSY_;
	} else {
		mailbox[1] = 0;
		mailbox[0] = MAILBOX_PARKED;
		my_syscall2(__NR_mlock_, mailbox, MAILBOX_SIZE);
		where = mailbox_address(&err);
	}
	put_u32(out, (unsigned int)where);
	put_u32(out + 4, (unsigned int)(where >> 32));
	put_u32(out + 8, err);
	send_frame('w', out, 12);
	if (!where) {
		mailbox[0] = 0;
		return;
	}
	until = rdtsc_() + (len >= 8 ? get_u32(p) | ((unsigned long)get_u32(p + 4) << 32) : 0);
	while (mailbox[0] == MAILBOX_PARKED && !mailbox[1] && (long)(rdtsc_() - until) < 0)
		__asm__ volatile("pause");
	mailbox[0] = 0;  /* from here the host writes nothing: one last look */
	n = mailbox[1];
	if (!n)
		return;
	if (n > MAILBOX_SIZE - MAILBOX_HEAD || n > sizeof(inbuf) - inlen) {
		write(2, "vmboot-agent: bad mailbox from the host\n", 40);
		exit(4);
	}
	memcpy(inbuf + inlen, (const unsigned char *)mailbox + MAILBOX_HEAD, n);
	inlen += n;
	read_at = rdtsc_();
	mailbox[1] = 0;
}

static void handle_frame(struct child *c, unsigned char type, const unsigned char *p, unsigned int n,
			 unsigned int behind)
{
	switch (type) {
	case 'E':
		if (c->pid)
			send_u32s('F', 16 /* EBUSY */, 0, 0);
		else
			start(c, p, n);
		break;
	case 'I':
		if (c->pid && c->in >= 0 && stdin_len + n <= STDIN_MAX) {
			memcpy(stdin_buf + stdin_len, p, n);
			stdin_len += n;
			flush_stdin(c);
		} else {
			send_u32s('A', n, 0, 0);  /* nobody to take it: acknowledged, dropped */
		}
		break;
	case 'i':
		stdin_end_wanted = 1;
		flush_stdin(c);
		break;
	case 'K':
		if (c->pid && n >= 4)
			kill(-c->pid, get_u32(p));
		break;
	case 'T':
		resumed(p, n, behind);
		break;
	case 'W':
		park(c, p, n);  /* what it finds is taken by the caller's loop, behind this frame */
		break;
	}
}

static void reap(struct child *c)
{
	int status, pid;

	while ((pid = wait4(-1, &status, WNOHANG, 0)) > 0) {
		if (pid != c->pid)
			continue;  /* an orphan that PID 1 inherited */
		/* what the command wrote before it ended is still in the pipes */
		if (c->out >= 0) pump(&c->out, 'O');
		if (c->err >= 0) pump(&c->err, 'e');
		if (c->out >= 0) { close(c->out); c->out = -1; }
		if (c->err >= 0) { close(c->err); c->err = -1; }
		if (c->in >= 0) { close(c->in); c->in = -1; }
		stdin_len = 0;
		stdin_end_wanted = 0;
		if ((status & 0x7f) == 0)
			send_u32s('X', 0, (status >> 8) & 0xff, 1);
		else
			send_u32s('X', 1, status & 0x7f, 1);
		c->pid = 0;
	}
}

int main(int argc, char **argv, char **envp)
{
	struct child c = { 0, -1, -1, -1 };
	unsigned long chld = 1UL << (SIGCHLD_ - 1);
	int sfd;
	const char *spec = 0;

	(void)envp;
	if (getpid() == 1) {
		as_init();
		spec = cmdline_value("vmboot.agent=");
	}
	if (argc >= 3 && !strcmp(argv[1], "--fd"))
		chan = atoi(argv[2]);
	else if (argc >= 2)
		spec = argv[1];
	if (chan < 0) {
		if (!spec)
			spec = "port:vmboot.agent";
		chan = open_channel(spec);
		if (chan >= 0 && has_prefix(spec, "port:"))
			open_output_ports(spec + 5);
	}
	if (chan < 0) {
		write(2, "vmboot-agent: no channel to the host\n", 37);
		if (getpid() == 1)
			reboot(LINUX_REBOOT_CMD_POWER_OFF_);
		return 2;
	}
	fcntl_(chan, F_SETFD_, FD_CLOEXEC_);  /* commands must not inherit the channel */
	/* SIGPIPE stays blocked: a command that closes its stdin gives EPIPE, not our death */
	chld |= 1UL << (SIGPIPE_ - 1);
	sigmask_(SIG_BLOCK_, &chld);
	chld = 1UL << (SIGCHLD_ - 1);
	sfd = signalfd_(&chld);
	send_frame('R', AGENT_VERSION, sizeof(AGENT_VERSION) - 1);

	for (;;) {
		struct pollfd fds[5];
		int nfds = 0, i_chan = -1, i_sig, i_out = -1, i_err = -1, i_in = -1;

		i_chan = nfds;
		fds[nfds].fd = chan; fds[nfds].events = POLLIN; nfds++;
		i_sig = nfds;
		fds[nfds].fd = sfd; fds[nfds].events = POLLIN; nfds++;
		if (c.out >= 0) { i_out = nfds; fds[nfds].fd = c.out; fds[nfds].events = POLLIN; nfds++; }
		if (c.err >= 0) { i_err = nfds; fds[nfds].fd = c.err; fds[nfds].events = POLLIN; nfds++; }
		if (c.in >= 0 && stdin_len) { i_in = nfds; fds[nfds].fd = c.in; fds[nfds].events = POLLOUT; nfds++; }
		if (poll(fds, nfds, -1) < 0)
			continue;
		if (i_out >= 0 && fds[i_out].revents) pump(&c.out, 'O');
		if (i_err >= 0 && fds[i_err].revents) pump(&c.err, 'e');
		if (i_in >= 0 && fds[i_in].revents) flush_stdin(&c);
		if (fds[i_sig].revents) {
			unsigned char info[128];
			while (read(sfd, info, sizeof(info)) > 0)
				;
			reap(&c);
		}
		if (i_chan >= 0 && fds[i_chan].revents) {
			ssize_t r = read(chan, inbuf + inlen, sizeof(inbuf) - inlen);
			if (r <= 0) {
				if (r < 0 && (errno == EINTR_ || errno == EAGAIN_))
					continue;
				if (c.pid)
					kill(-c.pid, 9);
				if (getpid() == 1)
					reboot(LINUX_REBOOT_CMD_POWER_OFF_);
				return 0;
			}
			inlen += r;
			read_at = rdtsc_();
			for (;;) {
				unsigned int len;
				if (inlen < 5)
					break;
				len = get_u32(inbuf);
				if (len == 0 || len > FRAME_MAX) {
					write(2, "vmboot-agent: bad frame from the host\n", 38);
					return 4;
				}
				if (inlen < 4 + len)
					break;
				handle_frame(&c, inbuf[4], inbuf + 5, len - 1, inlen - 4 - len);
				memmove(inbuf, inbuf + 4 + len, inlen - 4 - len);
				inlen -= 4 + len;
			}
		}
	}
}
