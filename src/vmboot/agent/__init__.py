"""The guest agent: a static program that runs commands in the guest for the host.

``vmboot-agent`` (built from ``vmboot-agent.c`` by :mod:`vmboot.agent.build`) runs as the guest's
init or under one, and serves :class:`~vmboot.agent.client.AgentClient` over one byte stream: a
virtio-console port, a vsock connection, or any stream socket. :mod:`~vmboot.agent.protocol`
is the wire format both sides share.
"""

from pathlib import Path

BINARY_NAME = "vmboot-agent"


def agent_binary() -> Path:
    """The committed agent binary shipped in this package (beside this file: vmboot is
    installed unpacked, and the binary is handed to the initramfs writer as a path)."""
    return Path(__file__).with_name(BINARY_NAME)
