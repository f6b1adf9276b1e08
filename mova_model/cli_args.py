"""The argument parser of every `python -m mova_model` command: a bad argument is one `error:` line on stderr
and exit status 2 (argparse's default prints the whole usage block before it)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class CliParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line: `error: <what> (see <prog> --help)`."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def refuse(message: str) -> int:
    """Write `error: <message>` to stderr; -> 2, the exit status of a refused command."""
    sys.stderr.write(f"error: {message}\n")
    return 2
