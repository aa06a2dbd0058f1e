"""What a probe reported: the records of its key/value stream (see :mod:`vmboot.probes.protocol`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmboot.probes.protocol import Key, split_key

_WORD_BITS = 32
_MAX_RECORDS = 100_000
"""A runaway probe cannot make the host collect without bound."""
_MAX_WORDS = 16
"""No record of the protocol has more; more means a confused probe."""
_MAX_ERRORS = 16


@dataclass
class Record:
    """One record: its kind (a :class:`Key` value), index, and the 32-bit words of its value."""

    kind: int
    index: int
    words: list[int] = field(default_factory=list)

    def u64(self, n: int = 0) -> int | None:
        """The ``n``-th 64-bit value (words ``2n`` and ``2n + 1``), or None if not sent."""
        if len(self.words) < 2 * n + 2:
            return None
        return self.words[2 * n] | self.words[2 * n + 1] << _WORD_BITS

    @property
    def name(self) -> str:
        try:
            return Key(self.kind).name
        except ValueError:
            return f"unknown({self.kind:#x})"

    def as_dict(self) -> dict[str, Any]:
        values = [self.u64(i) for i in range(len(self.words) // 2)]
        return {"key": self.name, "index": self.index, "values": values}


@dataclass
class ProbeReport:
    """Every record a probe sent, in order, and whether it finished."""

    records: list[Record] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Protocol violations seen by the host (wrong access size, data before a key...)."""

    # -- collecting (ProbeDevice calls these) --------------------------------------------------
    def begin(self, key: int) -> None:
        if len(self.records) >= _MAX_RECORDS:
            if len(self.errors) < _MAX_ERRORS:
                self.errors.append(f"more than {_MAX_RECORDS} records: the rest are dropped")
            return
        kind, index = split_key(key)
        self.records.append(Record(kind, index))

    def add_word(self, word: int) -> None:
        if len(self.errors) >= _MAX_ERRORS:
            return
        if not self.records:
            self.errors.append(f"data word {word:#x} before any key")
            return
        words = self.records[-1].words
        if len(words) >= _MAX_WORDS:
            self.errors.append(f"record {self.records[-1].name}: more than {_MAX_WORDS} data words")
            return
        words.append(word)

    # -- reading -------------------------------------------------------------------------------
    def find(self, key: Key, index: int = 0) -> Record | None:
        """The last record with this key and index."""
        for r in reversed(self.records):
            if r.kind == key and r.index == index:
                return r
        return None

    def value(self, key: Key, index: int = 0, n: int = 0) -> int | None:
        """The ``n``-th 64-bit value of a record, or None if it was not (completely) sent."""
        r = self.find(key, index)
        return None if r is None else r.u64(n)

    def indexed(self, key: Key) -> dict[int, Record]:
        """Every record of one kind, by index."""
        return {r.index: r for r in self.records if r.kind == key}

    @property
    def done(self) -> bool:
        """True once the DONE record arrived with its value."""
        r = self.find(Key.DONE)
        return r is not None and r.u64() is not None

    @property
    def records_before_done(self) -> int:
        for i, r in enumerate(self.records):
            if r.kind == Key.DONE:
                return i
        return len(self.records)

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "errors": list(self.errors),
                "records": [r.as_dict() for r in self.records]}
