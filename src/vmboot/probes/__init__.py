"""Probe kernels: tiny kernels that check the Linux/x86 boot contract from inside the guest.

The probes (GNU as sources in this package, prebuilt images beside them) report what they
find over I/O ports (:mod:`~vmboot.probes.protocol`); :class:`ProbeDevice` collects the
report, :func:`verify` compares it with the host's plan, :func:`run_probe` does it all::

    from vmboot.linux import BootOptions
    from vmboot.probes import run_probe

    result = run_probe("bzimage", BootOptions(cmdline="console=ttyS0", initrd=b"..."))
    for check in result.checks:
        print(check.name, check.expected, check.observed, check.ok)
"""

from vmboot.probes.checksum import fnv1a64_words
from vmboot.probes.device import ProbeDevice
from vmboot.probes.images import PROBE_FILES, ProbeKind, probe_image, probe_path
from vmboot.probes.protocol import EntryKind, Key
from vmboot.probes.report import ProbeReport, Record
from vmboot.probes.run import ProbeResult, ProbeTimings, run_probe
from vmboot.probes.verify import Check, verify

__all__ = [
    "PROBE_FILES",
    "Check",
    "EntryKind",
    "Key",
    "ProbeDevice",
    "ProbeKind",
    "ProbeReport",
    "ProbeResult",
    "ProbeTimings",
    "Record",
    "fnv1a64_words",
    "probe_image",
    "probe_path",
    "run_probe",
    "verify",
]
