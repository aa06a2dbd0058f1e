"""Copy real kernel reports from syzkaller's report test data into this corpus.

    python tests/data/console-logs/import_syzkaller.py SYZKALLER_CHECKOUT NAME...

Each NAME is a file of ``pkg/report/testdata/linux/report/`` in a syzkaller checkout
(https://github.com/google/syzkaller, Apache License 2.0): real console output of Linux
kernels 4.x to 6.x that syzbot and its users collected, headed by the title syzkaller
gives it. The console part is written to ``syzkaller/NAME.log`` and syzkaller's title
printed, for the ``syzkaller_title`` of ``expected.json`` (whose ``reports`` and
``verdict``, what vmboot must find, come from ``vmboot report`` output checked by hand).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_DIR = Path("pkg/report/testdata/linux/report")


def split(raw: str) -> tuple[dict[str, str], str]:
    """syzkaller's header (``TITLE: ...`` lines) and the console log under it."""
    head, _, body = raw.partition("\n\n")
    meta = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    return meta, body.split("\nREPORT:\n", 1)[0]


def main(argv: list[str]) -> int:
    checkout, names = Path(argv[0]), argv[1:]
    for name in names:
        raw = (checkout / SOURCE_DIR / name).read_bytes().decode("utf-8", "replace")
        meta, body = split(raw)
        (HERE / "syzkaller" / f"{name}.log").write_text(body)
        print(json.dumps({f"syzkaller/{name}.log": meta.get("TITLE", "")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
