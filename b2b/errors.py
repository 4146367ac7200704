"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class B2BError(Exception):
    """Base class: the message names the file, key or value at fault and what would be valid."""


class ConfigError(B2BError):
    """A config file or override is invalid."""


class ShapeError(ConfigError):
    """A sample shape the networks cannot produce or the data cannot provide."""


class DataError(B2BError):
    """Source files, shards or a manifest are missing, unreadable or inconsistent."""


class CheckpointError(B2BError):
    """A checkpoint is missing, incomplete or incompatible with the config."""


class NonFiniteLoss(B2BError):
    """A loss became NaN or inf: the run stops, keeping its last good checkpoint."""


def some_names(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names`` for a message, e.g. ``"a, b, c and 4 more"``."""
    rest = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {rest} more" if rest > 0 else "")
