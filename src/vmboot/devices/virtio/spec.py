"""The numbers of the virtio 1.2 specification that vmboot uses, each defined once.

Section numbers refer to the OASIS "Virtual I/O Device (VIRTIO) Version 1.2" specification.
"""

from __future__ import annotations

import enum

# -- 2.1 Device status field -----------------------------------------------------------------
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128

# -- 6 Reserved feature bits -----------------------------------------------------------------
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33

TRANSPORT_FEATURES = (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX) | (1 << F_VERSION_1)
"""Features every vmboot device offers: indirect descriptors, event index, virtio 1.x."""


class DeviceId(enum.IntEnum):
    """5 Device types."""

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    RNG = 4
    VSOCK = 19
    FS = 26


# -- 4.2.2 MMIO device register layout (version 2) -------------------------------------------
MMIO_MAGIC = 0x74726976  # "virt"
MMIO_VERSION = 2
MMIO_VENDOR_ID = 0x554D4551  # "QEMU", as Firecracker and cloud-hypervisor report
MMIO_SIZE = 0x200
"""Bytes of MMIO space one device takes (registers 0x000-0x0FF, config space from 0x100)."""


class MmioReg(enum.IntEnum):
    MAGIC_VALUE = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    QUEUE_RESET = 0x0C0
    CONFIG_GENERATION = 0x0FC
    CONFIG = 0x100


INTERRUPT_USED_BUFFER = 1
"""InterruptStatus bit 0: a used buffer notification."""
INTERRUPT_CONFIG_CHANGE = 2
"""InterruptStatus bit 1: the configuration space changed."""

# -- 2.7 Split virtqueues --------------------------------------------------------------------
MAX_QUEUE_SIZE = 32768
"""The largest queue size a split virtqueue may have (2.7)."""
DESC_SIZE = 16
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
USED_ELEM_SIZE = 8
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4

# -- 5.2 Block device ------------------------------------------------------------------------
SECTOR_SIZE = 512
BLK_F_SIZE_MAX = 1
BLK_F_SEG_MAX = 2
BLK_F_RO = 5
BLK_F_BLK_SIZE = 6
BLK_F_FLUSH = 9
BLK_F_DISCARD = 13
BLK_F_WRITE_ZEROES = 14
BLK_T_IN = 0
BLK_T_OUT = 1
BLK_T_FLUSH = 4
BLK_T_GET_ID = 8
BLK_T_DISCARD = 11
BLK_T_WRITE_ZEROES = 13
BLK_S_OK = 0
BLK_S_IOERR = 1
BLK_S_UNSUPP = 2
BLK_ID_BYTES = 20
"""Length of the serial a GET_ID request returns (5.2.6)."""
BLK_REQUEST_HEADER_SIZE = 16
"""type (le32), reserved (le32), sector (le64)."""
BLK_DISCARD_SEGMENT_SIZE = 16
"""sector (le64), num_sectors (le32), flags (le32)."""
BLK_WRITE_ZEROES_FLAG_UNMAP = 1

# -- 5.3 Console device ----------------------------------------------------------------------
CONSOLE_F_SIZE = 0
CONSOLE_F_MULTIPORT = 1
CONSOLE_DEVICE_READY = 0
CONSOLE_DEVICE_ADD = 1
CONSOLE_DEVICE_REMOVE = 2
CONSOLE_PORT_READY = 3
CONSOLE_CONSOLE_PORT = 4
CONSOLE_RESIZE = 5
CONSOLE_PORT_OPEN = 6
CONSOLE_PORT_NAME = 7
CONSOLE_CONTROL_SIZE = 8
"""struct virtio_console_control: id (le32), event (le16), value (le16)."""

# -- 5.1 Network device ----------------------------------------------------------------------
NET_F_CSUM = 0
NET_F_GUEST_CSUM = 1
NET_F_MTU = 3
NET_F_MAC = 5
NET_F_GUEST_TSO4 = 7
NET_F_GUEST_TSO6 = 8
NET_F_GUEST_UFO = 10
NET_F_HOST_TSO4 = 11
NET_F_HOST_TSO6 = 12
NET_F_HOST_UFO = 14
NET_F_MRG_RXBUF = 15
NET_F_STATUS = 16
NET_S_LINK_UP = 1
NET_HDR_SIZE = 12
"""struct virtio_net_hdr_v1: flags, gso_type (u8 each), hdr_len, gso_size, csum_start,
csum_offset, num_buffers (le16 each): the header with VIRTIO_F_VERSION_1 (5.1.6)."""
NET_HDR_NUM_BUFFERS_OFFSET = 10
ETH_ADDR_LEN = 6
ETH_HEADER_SIZE = 14
ETH_VLAN_TAG_SIZE = 4
NET_DEFAULT_MTU = 1500
NET_MAX_GSO_FRAME = 65535 + ETH_HEADER_SIZE + ETH_VLAN_TAG_SIZE
"""The largest frame with TSO/UFO (an IP datagram of 64 KiB and its Ethernet header)."""
