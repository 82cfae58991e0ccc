"""Error types, and `short`, how a message shows a value. Anything a user can cause is a
`UserError`: the CLI prints its message on one line and exits 2. Every other exception is an
internal error (exit 1)."""


class VaecompressError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(VaecompressError):
    """Bad input a user can fix: missing file, unknown model, wrong shapes, corrupt file."""


class FormatError(UserError):
    """A compressed file that cannot be read: bad magic, unknown version, truncated, corrupt."""


class DataUnavailableError(UserError):
    """MNIST could not be found or fetched; the message says how to supply it."""


def short(x: object) -> str:
    """repr cut to one short line: hostile headers can hold megabyte-long names."""
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."
