"""The pytest plugin's names and defaults, importable at no cost (pytest loads the plugin in
every session, whether or not a test asks for a guest)."""

MARKER = "vmboot"
"""The marker's name: ``@pytest.mark.vmboot(...)``."""
MARKER_KEYS = ("kernel", "cpus", "memory", "share")
"""The keywords the marker takes."""
MARKER_HELP = ("vmboot(kernel=PATH, cpus=N, memory=SIZE, share=[DIR[:TAG][,ro], ...]): the "
               "guest of the test's vm fixture")
DEFAULT_EXEC_TIMEOUT = 300.0
"""Seconds a command in a test's guest may run by default (``--vmboot-timeout``)."""
DEFAULT_BOOT_TIMEOUT = 600.0
"""Seconds a guest may take to boot until its agent answers (``--vmboot-boot-timeout``)."""
DEFAULT_FAIL_ON = "bug,emulation-failure,hung-task,oops,panic,rcu-stall,soft-lockup,timeout,triple-fault"
"""Verdicts (:mod:`vmboot.report`) that fail a test by default: every kernel failure, not
``warning``, and not a command's own failure (the test's business)."""
