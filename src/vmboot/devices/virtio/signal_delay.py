"""Used-buffer notifications of one queue held back a little, so that one interrupt tells
the driver about several completions (QEMU's virtio-net ``tx=timer`` does the same).

A device that completes a chain the driver is not waiting for (a sent frame: the driver
only frees it) calls :meth:`SignalDelay.completed` with how many chains it used. The
interrupt then waits until whichever comes first: :attr:`SignalDelay.delay` seconds (a
timer on the I/O thread), :attr:`SignalDelay.at_once` chains (the driver may be short of
free descriptors), or any other interrupt of the device (the driver's handler looks at
every queue, so it frees these too): a device that resets the delay then
(:meth:`~.device.VirtioDevice.used_buffers_signalled`) spares the timer's wake-up.
"""

from __future__ import annotations

from vmboot.devices.virtio.deadline_timer import DeadlineTimer


class SignalDelay:
    """The held-back notifications of one queue and the timer that bounds their wait."""

    def __init__(self, delay: float, at_once: int) -> None:
        self.delay = delay
        self.at_once = at_once
        self.timer = DeadlineTimer()
        self.waiting = 0
        """Chains used and not signalled yet."""
        self._armed = False

    @property
    def fd(self) -> int:
        """Readable when the delay is over: the I/O thread then processes the queue."""
        return self.timer.fd

    def completed(self, used: int) -> bool:
        """``used`` more chains were used (0: the queue was processed for another reason,
        the timer perhaps): True when the driver should be signalled now."""
        self.waiting += used
        expired = self._armed and self.timer.drain() > 0
        if expired:
            self._armed = False
        if not self.waiting:
            return False
        if expired or self.waiting >= self.at_once:
            self.reset()
            return True
        if not self._armed:
            self.timer.arm(self.delay)
            self._armed = True
        return False

    def reset(self) -> None:
        """Nothing waits (signalled, or the device was reset)."""
        self.waiting = 0
        if self._armed:
            self.timer.disarm()
            self._armed = False

    def close(self) -> None:
        self.timer.close()
