"""Errors a user can fix. The command-line entry points print their message (no traceback) and exit non-zero."""


class AttnlabError(Exception):
    """Base class: the message must say what is wrong and how to fix it."""


class ConfigError(AttnlabError):
    """A config value is missing, unknown or of the wrong type."""


class DataError(AttnlabError):
    """Data files are missing, unreadable or malformed."""


class RunError(AttnlabError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class DivergedError(AttnlabError):
    """Training produced a non-finite loss (NaN or inf): the run cannot go on."""
