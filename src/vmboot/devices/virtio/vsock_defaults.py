"""The defaults of a virtio-vsock device, in a module of their own so that the command line
shows them in its help without loading the device (:mod:`.vsock_packet`, :mod:`.vsock_host`
use them from here)."""

DEFAULT_GUEST_CID = 3
"""The guest's CID when none is given (the first one that is not reserved)."""
CONNECT_TIMEOUT = 10.0
"""Seconds the guest has to answer a connection the host starts (``CONNECT <port>`` on the
hybrid socket, :meth:`VsockDevice.connect`): then the device gives up, closes the host
stream and resets the request in the guest. Firecracker waits 2 s; a guest whose ring-0
code is emulated (docs/pvm-hosts.md) answers more slowly on a busy host."""
