"""Run ``vmboot exec`` exactly as the ``vmboot`` command does, and note, when each bench
marker reaches its stderr, the time and KVM's ``exits`` count of vCPU 0 (read inside this
process: :class:`kvm_stats.OwnVcpuStats`). Used by ``bench/exec_output.py``.

Run: ``python bench/exec_tap.py RECORD -- ARGS...`` (ARGS as for ``vmboot exec``); RECORD
gets one line per marker: ``MARKER perf_counter exits``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kvm_stats import OwnVcpuStats

MARKERS = (b"BULK-START", b"BULK-END")


def main() -> int:
    import vmboot.devices.console as console
    from vmboot.cli.main import main as vmboot_main

    record_path, separator, *args = sys.argv[1:]
    if separator != "--":
        raise SystemExit("usage: exec_tap.py RECORD -- ARGS...")
    stats = OwnVcpuStats()
    seen = bytearray()
    noted: set[bytes] = set()
    original = console.stream_sink

    def tapped(stream):  # type: ignore[no-untyped-def]
        sink = original(stream)
        if stream is not sys.stderr:
            return sink

        def tap(data: bytes) -> None:
            now = time.perf_counter()
            seen.extend(data)
            for marker in MARKERS:
                if marker not in noted and marker in seen:
                    noted.add(marker)
                    with open(record_path, "a") as record:
                        record.write(f"{marker.decode()} {now} {stats.read()}\n")
            sink(data)
        return tap

    console.stream_sink = tapped
    return vmboot_main(["exec", *args])


if __name__ == "__main__":
    sys.exit(main())
