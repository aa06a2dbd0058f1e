"""Write every target's seeds (fuzz/seeds.py: cut-down real kernels + small synthetic files)
into ``fuzz/corpus/<target>/`` for atheris/libFuzzer, which also adds what it finds there.

    python fuzz/corpus/make_corpus.py [--targets bzimage elf ...] [--out DIR]

The directories are generated (not committed): the seeds come from ../shared/kernels at
run time, so no multi-MiB kernel is copied into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
import fuzz._bootstrap  # noqa: F401
from fuzz.targets import TARGET_NAMES, load_target

HERE = Path(__file__).resolve().parent


def write_corpus(name: str, out: Path) -> int:
    target = load_target(name)
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds()
    for data in seeds:
        (directory / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
    return len(seeds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", choices=TARGET_NAMES, default=list(TARGET_NAMES))
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    for name in args.targets:
        print(f"{name}: {write_corpus(name, args.out)} seeds -> {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
