// SPDX-License-Identifier: GPL-2.0
/*
 * vmboot_provoke: make the kernel print one kind of report when the module is loaded, so
 * that tests/data/console-logs/record.py can record real reports of a distribution kernel.
 *
 *   insmod vmboot_provoke.ko what=warning|oops|bug|atomic-sleep|soft-lockup|hung-task|rcu-stall
 *
 * It loads (and stays loaded) once it has done its part: each recording is a fresh boot.
 */
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/string.h>

static char *what = "warning";
module_param(what, charp, 0444);
MODULE_PARM_DESC(what, "the report to provoke");

static int spin_seconds = 8;
module_param(spin_seconds, int, 0444);
MODULE_PARM_DESC(spin_seconds, "how long soft-lockup and rcu-stall keep the CPU");

static noinline void provoke_null_write(void)
{
	*(volatile int *)NULL = 1;
}

static noinline void provoke_spin(void)
{
	int i;

	for (i = 0; i < spin_seconds * 1000; i++)
		mdelay(1);
}

static int __init vmboot_provoke_init(void)
{
	if (!strcmp(what, "warning")) {
		WARN(1, "vmboot_provoke: a warning on purpose\n");
	} else if (!strcmp(what, "oops")) {
		provoke_null_write();
	} else if (!strcmp(what, "bug")) {
		BUG();
	} else if (!strcmp(what, "atomic-sleep")) {
		preempt_disable();
		msleep(10);
		preempt_enable();
	} else if (!strcmp(what, "soft-lockup")) {
		preempt_disable();
		provoke_spin();
		preempt_enable();
	} else if (!strcmp(what, "rcu-stall")) {
		rcu_read_lock();
		preempt_disable();
		provoke_spin();
		preempt_enable();
		rcu_read_unlock();
	} else if (!strcmp(what, "hung-task")) {
		set_current_state(TASK_UNINTERRUPTIBLE);
		schedule_timeout(spin_seconds * HZ);
	} else {
		pr_err("vmboot_provoke: unknown what=%s\n", what);
		return -EINVAL;
	}
	return 0;
}
module_init(vmboot_provoke_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Provoke one kernel report on load, for recording console logs");
