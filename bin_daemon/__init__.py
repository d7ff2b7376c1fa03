"""bin-daemon: the software of a self-sorting smart bin."""

__version__ = "0.1.0"
