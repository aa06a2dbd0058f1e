/*
 * rt_spin: make a uniprocessor guest stop answering, for the pytest plugin's hang test.
 *
 * It turns real-time throttling off (sched_rt_runtime_us = -1), makes itself SCHED_FIFO
 * at priority 99 and spins: no other task of the guest runs again (the guest agent
 * included), while the kernel's timer interrupts go on. Static against the kernel's nolibc.
 */

#define __NR_sched_setscheduler_ 144
#define SCHED_FIFO_ 1

struct sched_param_ { int sched_priority; };

int main(void)
{
	struct sched_param_ param = { 99 };
	int fd = open("/proc/sys/kernel/sched_rt_runtime_us", O_WRONLY, 0);

	if (fd < 0 || write(fd, "-1\n", 3) != 3) {
		write(2, "rt_spin: cannot turn real-time throttling off\n", 46);
		return 1;
	}
	close(fd);
	if (my_syscall3(__NR_sched_setscheduler_, 0, SCHED_FIFO_, &param) < 0) {
		write(2, "rt_spin: sched_setscheduler failed\n", 35);
		return 1;
	}
	for (;;)
		__asm__ volatile("" ::: "memory");
	return 0;
}
