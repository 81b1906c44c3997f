"""User-facing errors: the CLI prints their message on one line and exits with code 2 (INPUT_ERROR).

The CLI's exit codes: 0 every trial completed (or ASHA stopped it); SOME_TRIALS_FAILED (the table is
still written); INPUT_ERROR, a SkrayError; INTERNAL_ERROR, any other exception (a bug: the CLI prints
the traceback and one line); 130, interrupted (Ctrl-C)."""

SOME_TRIALS_FAILED = 1
INPUT_ERROR = 2
INTERNAL_ERROR = 3
INTERRUPTED = 130


class SkrayError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(SkrayError):
    pass


class DataError(SkrayError):
    pass


class BackboneError(SkrayError):
    pass


class ResourceError(SkrayError):
    pass


class Interrupted(SkrayError):
    """Ctrl-C (or a stop) inside a step the run needs whole, e.g. one of compare.tune's searches:
    the CLI exits 130, as for an interrupted sweep, and the same command resumes."""
