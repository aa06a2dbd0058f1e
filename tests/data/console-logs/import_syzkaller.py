"""Copy real kernel reports from syzkaller's report test data into this corpus.

    python tests/data/console-logs/import_syzkaller.py SYZKALLER_CHECKOUT NAME...
    python tests/data/console-logs/import_syzkaller.py --compare SYZKALLER_CHECKOUT

``--compare`` prints, for every titled report of that test data (not marked corrupted,
no NUM/ADDR placeholders in the title), whether vmboot's first title is syzkaller's, and
the totals.

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


def compare(checkout: Path) -> int:
    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from vmboot.report import find_reports

    same = differ = 0
    for path in sorted((checkout / SOURCE_DIR).iterdir()):
        meta, body = split(path.read_bytes().decode("utf-8", "replace"))
        title = meta.get("TITLE", "")
        if not title or "CORRUPTED" in meta or "NUM" in title or "ADDR" in title:
            continue
        reports = find_reports(body)
        got = reports[0].title if reports else "(no report)"
        same, differ = (same + 1, differ) if got == title else (same, differ + 1)
        print(f"{'same' if got == title else 'DIFF'} {path.name}: {title!r} / {got!r}")
    print(f"{same} of {same + differ} titles are syzkaller's")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"]:
        return compare(Path(argv[1]))
    checkout, names = Path(argv[0]), argv[1:]
    for name in names:
        raw = (checkout / SOURCE_DIR / name).read_bytes().decode("utf-8", "replace")
        meta, body = split(raw)
        (HERE / "syzkaller" / f"{name}.log").write_text(body)
        print(json.dumps({f"syzkaller/{name}.log": meta.get("TITLE", "")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
