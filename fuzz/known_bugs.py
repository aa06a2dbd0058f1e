"""Bugs the fuzzers found that are reported but not yet fixed (in modules other engineers own).

Each has a strict-xfail regression test in tests/test_fuzz_regressions.py; when its owner
fixes it, that test XPASSes (a failure under strict=True): delete the entry here and the
xfail marker there. The CI fuzz run (tests/test_fuzz_ci.py) fails on any finding that is
not listed here, and the atheris engine skips listed ones so a campaign can go past them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownBug:
    exc_type: str
    location_prefix: str
    """``path:line`` or just ``path`` of the innermost vmboot frame."""
    test: str
    """The regression test in tests/test_fuzz_regressions.py."""

    def matches(self, exc_type: str, location: str) -> bool:
        """Whether a finding of ``exc_type`` raised at ``location`` (``path:line``) is this bug."""
        return exc_type == self.exc_type and location.startswith(self.location_prefix)


_T = "tests/test_fuzz_regressions.py::"

KNOWN_BUGS: tuple[KnownBug, ...] = ()
