"""The device model: just enough of a PC for Linux to boot to userspace."""
