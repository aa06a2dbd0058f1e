"""The virtual-machine monitor: the run loop, exits, and the high-level Machine."""
