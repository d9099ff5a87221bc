"""Errors a user can fix. The CLI prints them as one line and exits non-zero, without a traceback."""


class TemdeError(Exception):
    """Base class of every error that is the user's input, not a bug."""


class DataError(TemdeError):
    """A data file is missing, corrupt or inconsistent. The message names the file (and line or index)."""


class CheckpointError(TemdeError):
    """A checkpoint or index file is missing, unreadable or belongs to another model."""
