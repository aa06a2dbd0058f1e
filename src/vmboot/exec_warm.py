"""``vmboot.exec_warm`` is :mod:`vmboot.execute.warm` (the exec code lives in one package)."""

from vmboot.execute.cache import SNAPSHOTS_SUBDIR
from vmboot.execute.warm import WARM_BOOT_TIMEOUT, warm_key, warm_snapshot

__all__ = ["SNAPSHOTS_SUBDIR", "WARM_BOOT_TIMEOUT", "warm_key", "warm_snapshot"]
