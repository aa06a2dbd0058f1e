"""The vhost-user front end: a device whose queues another process serves.

:mod:`~vmboot.devices.vhost_user.messages` is the wire format of QEMU's vhost-user
specification (docs/interop/vhost-user.rst), :mod:`~vmboot.devices.vhost_user.frontend` speaks it
to a back end over a UNIX socket (guest RAM passed as memfds, queues as eventfds), and
:mod:`~vmboot.devices.vhost_user.virtiofsd` finds, starts and stops virtiofsd, the back end
of virtio-fs.
"""
