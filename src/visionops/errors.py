"""Errors meant for people: the CLI prints them as one line, never as a traceback."""


class VisionOpsError(Exception):
    """A failure the user can act on. The message names the file/key/value and the fix."""

    exit_code = 1


class ConfigError(VisionOpsError):
    """params.yaml is missing, unreadable, or holds an unknown key / wrong type / bad value."""

    exit_code = 2


class DataError(VisionOpsError):
    """The images in data/ break a validation rule that makes training meaningless."""
