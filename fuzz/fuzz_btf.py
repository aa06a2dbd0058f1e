"""BTF bytes -> Btf, then every type decoded and every struct's members, sizes and offsets."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from fuzz.harness import Target, atheris_main
from fuzz.seeds import btf_seeds
from vmboot.debug.btf import Btf, BtfKind
from vmboot.errors import VmbootError

MAX_TYPES = 256


def _offsets() -> list[int]:
    offs = set(range(0, 24, 2))
    for seed in btf_seeds():
        offs.update(range(24, min(len(seed), 24 + 12 * 40), 4))
    return sorted(offs)


def one_input(data: bytes) -> None:
    try:
        btf = Btf(data, "<fuzz>")
    except VmbootError:
        return
    for type_id in range(min(len(btf), MAX_TYPES)):
        try:
            t = btf.type_by_id(type_id)
            btf.resolve(t)
            if t.kind in (BtfKind.STRUCT, BtfKind.UNION) and t.name:
                btf.find(t.name)
                for m in t.members:
                    if m.name:
                        btf.member(t, m.name)
                        btf.offsetof(t.name, m.name)
            btf.sizeof(t)
        except VmbootError:
            continue


TARGET = Target("btf", one_input, lambda: list(btf_seeds()), _offsets, max_len=1 << 14,
                description="Btf parsing, type decoding, member lookup, sizeof/offsetof")

if __name__ == "__main__":
    atheris_main(TARGET)
