"""virtio devices on the virtio-mmio transport (OASIS virtio 1.2, sections 2, 4.2 and 5).

One small module per concept, as Firecracker's ``devices/virtio``: :mod:`.spec` (the
numbers of the specification), :mod:`.queue` (split virtqueues), :mod:`.device` (what a
device is), :mod:`.mmio` (the transport), :mod:`.io_thread` (the event loop that owns the
notification fds), and one module per device (:mod:`.block`, :mod:`.console`, :mod:`.rng`).
:mod:`.setup` places a set of devices in the MMIO hole and names them on the kernel command line.
"""
