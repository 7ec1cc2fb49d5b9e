"""User-facing errors: each carries one line that says what is wrong and how to fix it."""


class FreeRetError(Exception):
    """Base class of errors that entry points print as a single line (no traceback)."""


class CheckpointNotFoundError(FreeRetError):
    """A model checkpoint is neither on disk nor reachable on the hub."""


class ConfigError(FreeRetError):
    """A configuration value is invalid (unknown name, out-of-range index, bad template)."""


class DataError(FreeRetError):
    """A dataset file is missing or malformed."""
