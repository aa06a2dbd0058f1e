"""A machine's network: the virtio-net device for a :class:`~vmboot.net.config.NetConfig`."""

from __future__ import annotations

from vmboot.devices.virtio.net import NetDevice, mac_for_name, parse_mac
from vmboot.net.config import DHCP_CMDLINE, NetConfig


def build_net_device(config: NetConfig) -> NetDevice:
    """The device with its backend open (the TAP attached, or passt started)."""
    mac = parse_mac(config.mac) if config.mac else mac_for_name(config.vm_name)
    backend = config.open_backend()
    try:
        return NetDevice(backend, mac)
    except BaseException:
        backend.close()
        raise


def net_cmdline(cmdline: str, config: NetConfig) -> str:
    """``cmdline`` with ``ip=dhcp`` when the config asks the kernel to configure eth0."""
    if config.kernel_dhcp and DHCP_CMDLINE not in cmdline.split():
        return f"{cmdline} {DHCP_CMDLINE}".strip()
    return cmdline
