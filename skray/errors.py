"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


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
