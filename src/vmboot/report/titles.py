"""Report headers and their titles: which first line starts which kind of kernel report.

Titles follow the conventions kernel CI systems group crashes by (syzkaller's among them):
``BUG: unable to handle kernel NULL pointer dereference in sysrq_handle_crash``,
``WARNING in ...``, ``INFO: task hung in ...``, ``KASAN: use-after-free Read in ...``. The
function named is the first frame that is not part of the reporting machinery itself
(:data:`MACHINERY`): the sanitizers' and the warn/bug/panic paths, stack dumping, allocators,
locking primitives, string and copy helpers.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from vmboot.report.kinds import ReportType


class FunctionFrom(enum.Enum):
    """Where a title's function comes from."""

    NONE = "none"
    STACK = "stack"
    """The first frame (the faulting RIP, then the call trace) outside the machinery."""
    HEADER = "header"
    """The function the header line names, else as STACK."""
    STALL = "stall"
    """The interrupted code's frame just above where it was dispatched (a syscall, a
    workqueue, a kthread), as stalls loop over several functions."""
    HANG = "hang"
    """The first frame of the blocked task that is not the scheduler or a sleeping lock."""
    LOCK = "lock"
    """The ``at: func`` of the lock being acquired (lockdep), else as STACK."""


@dataclass(frozen=True)
class Header:
    """A report's first line (a regular expression matched at the start of the kernel text),
    its type, and its title (``str.format`` fields: the pattern's named groups, ``func``)."""

    pattern: re.Pattern[str]
    type: ReportType
    title: str
    function: FunctionFrom = FunctionFrom.STACK
    skip: tuple[str, ...] = ()
    """Frames to skip (substrings) on top of :data:`MACHINERY`."""


def _h(pattern: str, type_: ReportType, title: str,
       function: FunctionFrom = FunctionFrom.STACK, skip: tuple[str, ...] = ()) -> Header:
    return Header(re.compile(pattern), type_, title, function, skip)


T = ReportType
F = FunctionFrom
_WARN_AT = r"WARNING: (?:CPU: \d+ PID: \d+ )?(?:at )?"
HEADERS: tuple[Header, ...] = (
    _h(r"Kernel panic - not syncing: (?P<what>.*)", T.PANIC, "kernel panic: {what}", F.NONE),
    _h(r"PANIC: double fault", T.PANIC, "PANIC: double fault in {func}"),
    _h(r"BUG: KASAN: (?P<kind>[\w-]+(?: or [\w-]+)?)(?: in (?P<func>\S+))?", T.KASAN,
       "KASAN: {kind}{access} in {func}", F.STACK),
    _h(r"BUG: KMSAN: (?P<kind>[\w-]+)", T.KMSAN, "KMSAN: {kind} in {func}"),
    _h(r"BUG: KCSAN: (?P<what>.*\S)", T.KCSAN, "KCSAN: {what}", F.NONE),
    _h(r"BUG: KFENCE: (?P<what>[\w -]+?) in (?P<func>\S+)", T.KFENCE,
       "KFENCE: {what} in {func}", F.HEADER),
    _h(r"UBSAN: (?P<kind>[\w -]+?)(?: in \S+)?\s*$", T.UBSAN, "UBSAN: {kind} in {func}",
       skip=("ubsan", "__ubsan")),
    _h(r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer "
       r"dereference)", T.OOPS, "BUG: unable to handle kernel NULL pointer dereference in {func}"),
    _h(r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address)",
       T.OOPS, "BUG: unable to handle kernel paging request in {func}"),
    _h(r"general protection fault", T.OOPS, "general protection fault in {func}"),
    _h(r"kernel BUG at lib/list_debug\.c", T.BUG, "BUG: corrupted list in {func}",
       skip=("list_",)),
    _h(r"kernel BUG at mm/usercopy\.c", T.BUG, "BUG: bad usercopy in {func}",
       skip=("usercopy",)),
    _h(r"kernel BUG at ", T.BUG, "kernel BUG in {func}"),
    _h(r"(?:[\w ]+: )?BUG: soft lockup", T.SOFT_LOCKUP, "BUG: soft lockup in {func}", F.STALL),
    _h(r"INFO: task .* blocked (?:in I/O wait )?for more than \d+ seconds", T.HUNG_TASK,
       "INFO: task hung in {func}", F.HANG),
    _h(r"(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected(?: expedited)? stall", T.RCU_STALL,
       "INFO: rcu detected stall in {func}", F.STALL, skip=("apic_timer_interrupt", "rcu")),
    _h(r"BUG: sleeping function called from invalid context", T.MIGHT_SLEEP,
       "BUG: sleeping function called from invalid context in {func}"),
    _h(r"BUG: scheduling while atomic", T.BUG, "BUG: scheduling while atomic in {func}",
       skip=("schedule", "sleep")),
    _h(r"BUG: using (?P<what>\w+\(\)) in preemptible", T.BUG,
       "BUG: using {what} in preemptible code in {func}",
       skip=("check_preemption_disabled", "debug_smp_processor_id")),
    _h(r"(?:WARNING|INFO): (?:possible circular locking dependency detected|possible recursive "
       r"locking detected|possible irq lock inversion dependency detected|.*-safe -> .*-unsafe "
       r"lock order detected)", T.LOCKDEP, "possible deadlock in {func}", F.LOCK),
    _h(r"(?:WARNING|INFO): inconsistent lock state", T.LOCKDEP, "inconsistent lock state in {func}",
       F.LOCK),
    _h(r"(?P<level>WARNING|INFO): suspicious RCU usage", T.LOCKDEP,
       "{level}: suspicious RCU usage in {func}", skip=("rcu", "kmem", "slab")),
    _h(r"(?P<level>WARNING|BUG): bad unlock balance detected!", T.LOCKDEP,
       "{level}: bad unlock balance in {func}"),
    _h(r"(?P<level>WARNING|BUG): held lock freed!", T.LOCKDEP, "{level}: held lock freed in {func}"),
    _h(r"INFO: trying to register non-static key", T.LOCKDEP,
       "INFO: trying to register non-static key in {func}", skip=("stack", "lock", "IRQ")),
    _h(_WARN_AT + r"\S*lib/refcount\.c", T.REFCOUNT, "WARNING: refcount bug in {func}",
       skip=("refcount",)),
    _h(_WARN_AT + r"\S*kernel/locking/lockdep\.c", T.LOCKDEP, "WARNING: locking bug in {func}"),
    _h(_WARN_AT + r"\S*lib/debugobjects\.c", T.WARNING, "WARNING: ODEBUG bug in {func}",
       skip=("debug_",)),
    _h(_WARN_AT + r"\S*mm/\S+\.c:\d+ (?:at )?\S*k\w?malloc", T.WARNING,
       "WARNING: kmalloc bug in {func}", skip=("alloc",)),
    _h(_WARN_AT + r"\S*lib/kobject\.c", T.WARNING, "WARNING: kobject bug in {func}",
       skip=("kobject",)),
    _h(_WARN_AT + r"\S*fs/proc/generic\.c", T.WARNING, "WARNING: proc registration bug in {func}",
       skip=("proc_",)),
    _h(_WARN_AT + r"\S*mm/usercopy\.c", T.WARNING, "WARNING: bad usercopy in {func}",
       skip=("usercopy", "check_object_size")),
    _h(r"(?P<level>WARNING|BUG): lock held when returning to user space", T.LOCKDEP,
       "{level}: lock held when returning to user space in {func}", F.LOCK),
    _h(r"(?P<level>WARNING|BUG): .*still has locks held!", T.LOCKDEP,
       "{level}: still has locks held in {func}", F.LOCK),
    _h(r"WARNING: kernel stack regs at \S+ in \S+ has bad '(?P<what>\w+)' value", T.WARNING,
       "WARNING: kernel stack regs has bad '{what}' value", F.NONE),
    _h(r"WARNING: kernel stack frame pointer at \S+ in \S+ has bad value", T.WARNING,
       "WARNING: kernel stack frame pointer has bad value", F.NONE),
    _h(_WARN_AT + r"\S+:\d+ (?:at )?(?P<func>[\w.$]+)", T.WARNING, "WARNING in {func}", F.HEADER),
    _h(r"WARNING: \S+:\d+ at (?P<func>[\w.$]+)", T.WARNING, "WARNING in {func}", F.HEADER),
    _h(r"BUG: Bad page (?P<what>state|cache)", T.BUG, "BUG: Bad page {what} in {func}"),
    _h(r"(?:BUG: memory leak|unreferenced object 0x[0-9a-f]+ \(size \d+\))", T.KMEMLEAK,
       "memory leak in {func}"),
    _h(r"divide error: ", T.OOPS, "divide error in {func}"),
    _h(r"stack segment: ", T.OOPS, "stack segment fault in {func}"),
    _h(r"invalid opcode: ", T.OOPS, "invalid opcode in {func}"),
    _h(r"Oops: ", T.OOPS, "Oops in {func}"),
    _h(r"BUG: (?P<what>[A-Za-z][\w ()-]*?[\w)])\s*(?:[-:!,.]|at |for |on |$)", T.BUG, "BUG: {what}",
       F.NONE),
    _h(r"WARNING: (?P<what>[A-Za-z][\w ()-]*?[\w)])\s*(?:[-:!,.]|at |for |on |$)", T.WARNING,
       "WARNING: {what}", F.NONE),
)
"""Most specific first: the first header that matches a line decides."""

HEADER_WORDS = re.compile(r"BUG|WARNING|INFO|PANIC|Kernel panic|UBSAN|general protection|Oops|"
                          r"divide error|stack segment|invalid opcode|unreferenced object")
"""A word every header contains: lines without one are not tried against each header."""

CONTINUATIONS = re.compile(r"(?:Oops|invalid opcode|int3|#PF): ")
"""Lines that look like a header but, inside an open report, belong to it (an x86 oops
prints ``BUG: ...`` then ``#PF: ...`` then ``Oops: ...``; ``kernel BUG at`` is followed by
``invalid opcode``)."""

MACHINERY_PATTERNS: tuple[str, ...] = (
    # the sanitizers and the reports they print
    "kasan", "kmsan", "kcsan", "kfence", "kmemleak", "ubsan", "__asan", "__msan", "__tsan",
    "__sanitizer", "check_memory_region", "print_address_description", "print_report",
    "create_object", "check_heap_object", "assertfail",
    # panic, BUG, WARN and their traps; stack dumping
    "panic", "report_bug", "fixup_bug", "handle_bug", "invalid_op", "do_error_trap", "do_trap",
    "_trap$", "^asm_exc_", "^exc_", "^__warn", "warn_slowpath", "warn_alloc", "dump_stack",
    "show_stack", "show_trace", "dump_backtrace", "walk_stack", "stack_trace_save",
    "arch_stack_walk", "^hex_dump", "print_hex_dump", "printk", "^vsn?printf", "^sn?printf",
    # allocators
    "k?v?[mzc]alloc", "krealloc", "kmem_cache", "^slab_", "allocate_slab", "alloc_pages",
    "^kv?free$", "memdup", "^folio_(?:alloc|unlock)",
    # locking, reference counts, atomics, waiting
    "lockdep", "lock_acquire", "lock_release", "lock_class", "mark_lock", "spin_lock",
    "spin_unlock", "spin_trylock", "read_lock", "write_lock", "read_unlock", "write_unlock",
    "^down$", "^down_(?:read|write|trylock)", "^up_(?:read|write)", "^mutex_", "^__mutex_",
    "^rt_mutex_", "^refcount_", "^kref_", "^atomic(?:64)?_", "^(?:set|clear|change|test)_bit",
    "^__wake_up", "^bh_(?:enable|disable)", "^__local_bh", "^wait_for_completion",
    "^complete$", "finish_wait", "^kthread_stop", "might_fault", "might_sleep", "might_resched",
    "held_locks", "print_unlock_imbalance", "debug_check_no_locks",
    # string, copy and list helpers; retpolines
    "^mem(?:cpy|set|move|cmp|chr)", "^__mem(?:cpy|set|move)",
    "^str(?:n?cpy|l?cpy|scpy|len|nlen|cmp|ncmp|n?str|chr|n?dup)$", "^_?copy_(?:to|from)_user",
    "copy_(?:to|from)_iter", "^(?:put|get)_user", "^(?:__)?list_(?:add|del)", "^(?:__)?rb_", "^klist_",
    "_indirect_thunk_", "^__phys_addr", "^(?:hex_|dentry_)?string$", "^pointer$",
    "read_word_at_a_time", "cancel_work",
    # tracing, debug objects, timers, work queues, devices
    "perf_trace", "debug_object", "_is_static_object", "^del_timer", "queue_work",
    "workqueue$", "^_?_?flush_work", "try_to_grab_pending", "^osq_", "lock_timer_base",
    "read_once_word_nocheck", "^kobject_", "^device_(?:add|del|unregister)$",
)
MACHINERY = re.compile("|".join(MACHINERY_PATTERNS))
"""Frames of the code that reports a bug rather than has it (matched with ``re.search``)."""

SYSCALL_PREFIXES = ("__x64_sys_", "__ia32_sys_", "__se_sys_", "__do_sys_", "____sys_", "___sys_",
                    "__sys_", "ksys_", "SyS_", "SYSC_", "sys_", "__x64_", "__ia32_")
"""System-call wrapper prefixes dropped from a title's function (``__x64_sys_ioctl`` is
``ioctl``), so that titles stay the same across kernel versions."""

COMPILER_SUFFIX = re.compile(r"\.(?:isra|constprop|part|cold|llvm|lto_priv)(?:\.\d+)*.*$")
"""``.isra.0``, ``.constprop.3``, ``.part.0``, ``.cold``: names the compiler made."""

STALL_ANCHORS = re.compile("|".join((
    # generic dispatchers: work queues, system calls, soft interrupts, timers, kthreads
    "process_one_work", "do_syscall_", "do_fast_syscall_", "entry_SYSCALL", "^kthread$",
    "ret_from_fork", "smpboot_thread_fn", "run_ksoftirqd", "do_softirq", "call_timer_fn",
    "run_timers", "hrtimer_run", "start_secondary", "cpu_startup_entry", "tasklet_action",
    "smp_call_function", "task_work_run", "^__fput", "exit_to_user",
    # system calls that dispatch to a driver or protocol: the frame above names it
    "vfs_(?:read|write)", "vfs_ioctl", "ksys_ioctl", "^(?:__x64_)?sys_ioctl", r"compat_\w*ioctl",
    "^call_(?:read|write)_iter", "new_sync_(?:read|write)", "do_dentry_open", "vfs_open",
    "do_mmap", "mmap_region", "^sock_(?:sendmsg|recvmsg|ioctl)", "^(?:nf|rt)netlink_rcv_msg",
    "^netlink_dump", "netif_receive_skb", "do_page_fault", "__do_fault",
)))
"""Where a stalled CPU's work was dispatched from: the stall is in the frame just above."""

HANG_ANCHORS = {"rtnl_lock": "rtnl_lock", "synchronize_rcu": "synchronize_rcu",
                "synchronize_srcu": "synchronize_rcu", "synchronize_net": "synchronize_rcu",
                "synchronize_sched": "synchronize_rcu"}
"""Hung tasks blocked in these are grouped under one name: the cause is elsewhere."""

HANG_SKIP = ("sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait",
             "synchronize", "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier")
"""Frames of a blocked task that only say it sleeps."""
