"""Something that holds host resources until :meth:`Closeable.close`, as a context manager."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Closeable(abc.ABC):
    """``with obj:`` closes ``obj`` on the way out, however the block ends."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the object holds; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
