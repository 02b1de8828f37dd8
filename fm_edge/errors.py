"""The two error kinds the CLI turns into one-line messages: bad usage (exit 2) and failed work (exit 1)."""


class FmEdgeError(Exception):
    """A runtime failure with a one-line, user-facing message (exit code 1)."""

    exit_code = 1


class UsageError(FmEdgeError, ValueError):
    """A bad argument or input value: names the value and what is allowed (exit code 2)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
