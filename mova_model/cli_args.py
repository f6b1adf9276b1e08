"""The argument parser of every `python -m mova_model` command: a bad argument is one `error:` line on stderr
and exit status 2 (argparse's default prints the whole usage block before it)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import NoReturn, Tuple, Union


class CliParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line: `error: <what> (see <prog> --help)`."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)

    def parse_or_status(self, argv) -> Union[argparse.Namespace, int]:
        """`parse_args(argv)`, or the exit status when the parser ended the command itself: 0 after `--help`,
        2 after its one `error:` line."""
        try:
            return self.parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0)


def refuse(message: str) -> int:
    """Write `error: <message>` to stderr; -> 2, the exit status of a refused command."""
    sys.stderr.write(f"error: {message}\n")
    return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so a command ends the way Ctrl-C ends it (the trainer
    keeps its last completed step; temporary files are removed)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises `Terminated` (a `KeyboardInterrupt`) in the main thread. Elsewhere (a host
    that embeds the CLI in a worker thread) SIGTERM keeps its handler."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_exit_code(exc: KeyboardInterrupt) -> Tuple[str, int]:
    """(what happened, in words; the shell's exit status: 143 for SIGTERM, 130 for Ctrl-C)."""
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)", 128 + signal.SIGTERM
    return "interrupted (Ctrl-C)", 128 + signal.SIGINT
