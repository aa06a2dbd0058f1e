"""Fold bench/results/*.json into the README's benchmark table and draw bench/results/summary.png.

Run: ``python bench/report.py`` after the benchmarks (each ``bench/*.py`` script writes its
``bench/results/NAME.json``; the README lists their commands). The table sits in README.md
between the ``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers; everything in it, and
in the plot, comes from the JSON files, which keep every raw figure. A recorded absolute
path of this host is refused (``common.portable_paths`` writes them portable). A result's
``note`` (why a peer could not be measured, say) is printed under the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS, fmt_value

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def load_rows() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    hosts: dict[str, list[str]] = {}  # a host's description -> the scripts last run on it
    runs: list[str] = []
    notes: list[str] = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        # a command run inside the guest names the guest's paths, not this host's
        check_portable(path, json.dumps({k: v for k, v in data.items() if k != "guest_command"}))
        host = data.get("machine", {})
        hosts.setdefault(f"{host.get('cpu', '?')}, {host.get('cpus', '?')} CPUs, KVM: "
                         f"{host.get('kvm', '?')}, Python {host.get('python', '?')}",
                         []).append(path.stem)
        commit = host.get("vmboot_commit", "?")
        runs.append(f"{path.stem} at {commit} ({data.get('when', '?')[:16].replace('T', ' ')})")
        for row in data.get("summary", []):
            rows.append({**row, "source": path.name, "when": data.get("when", "")})
        if data.get("note"):
            notes.append(f"{path.stem}: {data['note']}")
    machine = {"hosts": hosts, "runs": runs, "notes": notes}
    return rows, machine


def fmt_ratio(ratio: float) -> str:
    """Two decimals, or two significant digits for a ratio too small for them (0.00027x)."""
    return f"{ratio:.2f}x" if ratio >= 0.01 else f"{ratio:.2g}x"


def check_portable(path: Path, text: str) -> None:
    """Refuse a result file that records an absolute path of this host."""
    import re
    import tempfile

    for prefix in (str(REPO.parent), str(Path.home()), tempfile.gettempdir()):
        if re.search(re.escape(prefix) + r"/", text):
            sys.exit(f"{path}: records a path under {prefix}/ of this host; rewrite it with "
                     f"common.portable_paths (write_results does) and run report.py again")


def render(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    hosts: dict[str, list[str]] = machine.get("hosts", {})
    measured_on = (next(iter(hosts)) if len(hosts) == 1 else
                   "; ".join(f"{host} ({', '.join(stems)})" for host, stems in hosts.items()))
    lines = [
        START,
        f"Measured on: {measured_on}. Medians of `runs` runs, "
        f"min to max in brackets. Each script's last run (vmboot commit, UTC): "
        f"{'; '.join(machine.get('runs', []))}.",
        "",
        "| what | vmboot | peer | peer's time | ratio | goal | runs | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v, p = r["vmboot"], r["peer_timing"]

        def f(x: float, unit: str = r.get("unit", "s")) -> str:
            return fmt_value(x, unit)

        lines.append(
            f"| {r['figure']} | {f(v['median'])} ({f(v['min'])} to {f(v['max'])}) "
            f"| {r['peer']} | {f(p['median'])} ({f(p['min'])} to {f(p['max'])}) "
            f"| {fmt_ratio(r['ratio'])} | {r['goal'] or '-'} | {r['runs']} | `{r['command']}` |"
        )
    notes = machine.get("notes", [])
    if notes:
        lines += ["", *(f"Note on {note}" for note in notes)]
    lines += ["", "![benchmarks](bench/results/summary.png)", END]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plot drawn")
        return None
    fig, ax = plt.subplots(figsize=(13, 0.45 * len(rows) + 1.5))
    def short(text: str, n: int) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    # One bar per row: a figure can have several peers, so the peer is part of the label.
    labels = [f"{short(r['figure'], 60)} | vs {short(r['peer'].split(',')[0], 24)}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    ax.barh(labels, ratios, color=["tab:green" if x <= 1 else "tab:orange" for x in ratios])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("vmboot / peer (median time or memory; < 1 means vmboot uses less)")
    ax.invert_yaxis()
    fig.tight_layout()
    out = RESULTS / "summary.png"
    fig.savefig(out, dpi=100)
    return out


def main() -> None:
    rows, machine = load_rows()
    if not rows:
        sys.exit("no bench/results/*.json with a summary: run the benchmarks first")
    block = render(rows, machine)
    text = README.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Benchmarks\n\n" + block + "\n"
    README.write_text(text)
    print(block)
    out = plot(rows)
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
