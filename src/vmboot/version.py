"""vmboot's version: one string, in a module that imports nothing, so any layer may use it."""

__version__ = "0.1.0"
