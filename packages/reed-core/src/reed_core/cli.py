"""How every REED entry point ends on bad input: one ``error:`` line on stderr and exit status 2.

A mistake in what the user gave (a flag, a config key, a file) is raised where it is detected, as a
:class:`UserError` (or :class:`reed_core.config.ConfigError`, :class:`reed_core.launch.SlurmConfigError`)
whose message names the flag, key or file and says what to do. :func:`main_guard` wraps an entry
point's ``main(argv)`` and turns those into::

    error: data.limit: must be > 0 (or unset to use every example), got -10

with exit status 2 (argparse's status for a usage error). A ``FileNotFoundError`` raised with a
message of our own (no ``errno``: a deliberate "not found, do this" check) counts too. Anything else
(a bug) still ends in a traceback.

    @main_guard
    def main(argv: list[str] | None = None) -> ...:
        ...

The guarded ``main`` raises :class:`ErrorExit`, a ``SystemExit`` with code 2 whose ``str()`` is the
message, so in-process tests can ``pytest.raises(SystemExit, match=...)``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2


class UserError(ValueError):
    """Bad input from the user; the message names the flag / key / file and what to do about it.

    A ``ValueError``, so code that caught the ``ValueError`` of a check before still catches it."""


class UserFileError(UserError, FileNotFoundError):
    """A user-given path that does not exist or does not hold what it should."""


class ErrorExit(SystemExit):
    """``SystemExit(2)`` carrying the message (``str()``) that was printed as the ``error:`` line."""

    def __init__(self, message: str):
        super().__init__(EXIT_USAGE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def error_line(message: object) -> str:
    """``error: <message>`` on one line (newlines folded, no doubled ``error:`` prefix)."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    while text.startswith("error:"):
        text = text[len("error:") :].strip()
    return f"error: {text}"


def exit_with_error(message: object) -> NoReturn:
    """Print ``error: <message>`` to stderr and exit with status 2 (:class:`ErrorExit`)."""
    line = error_line(message)
    print(line, file=sys.stderr, flush=True)
    raise ErrorExit(line)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a mistake in the user's input (see the module docstring), not a bug."""
    from reed_core.config import ConfigError
    from reed_core.launch import SlurmConfigError

    if isinstance(err, (UserError, ConfigError, SlurmConfigError)):
        return True
    # a FileNotFoundError we raised ourselves ("... not found; pass data.path=...") has no errno;
    # one from the OS (errno 2) may be an internal file, so it stays a traceback
    return isinstance(err, FileNotFoundError) and err.errno is None


def main_guard(main: F) -> F:
    """Wrap an entry point: user errors become one ``error:`` line and exit status 2."""

    @functools.wraps(main)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except ErrorExit:
            raise
        except Exception as err:
            if not is_user_error(err):
                raise
            exit_with_error(err)

    return guarded  # type: ignore[return-value]
