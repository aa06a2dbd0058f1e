"""Host-side network backends for virtio-net: an existing TAP interface (:mod:`.tap`) or
user-mode networking through ``passt`` (:mod:`.passt`), chosen by a :class:`.config.NetConfig`."""

DHCP_CMDLINE = "ip=dhcp"
"""The kernel parameter that has the kernel itself configure eth0 by DHCP (IP_PNP_DHCP):
for initramfs guests without a DHCP client. Here, not in :mod:`.config`, so that the
command line names it in its help without loading the backends."""
