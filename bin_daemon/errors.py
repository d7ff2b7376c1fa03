"""Errors a user can act on. Each carries one clear line; the CLI prints it without a traceback."""


class BinDaemonError(Exception):
    """Base class: str(error) is a complete, user-facing sentence."""


class ConfigError(BinDaemonError):
    """The configuration file is missing, malformed or invalid."""


class ModelError(BinDaemonError):
    """The model file, its labels or its card are missing or do not match."""


class ImageError(BinDaemonError):
    """An image could not be read or decoded."""


class HardwareError(BinDaemonError):
    """A hardware device could not be set up or stopped answering."""
