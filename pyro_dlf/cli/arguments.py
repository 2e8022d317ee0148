"""Argument types and parser classes shared by every ``pyro-dlf`` command (the library's and the lab's).

The types raise :class:`argparse.ArgumentTypeError`, so argparse names the flag in its one-line error; none
imports torch, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import re

__all__ = ["count", "POSITIVE", "NONNEGATIVE", "fraction", "num_factors", "device_name", "training_length", "Parser",
           "HelpFormatter", "add_command", "check_output_dir"]


def count(minimum: int):
    """An argparse type: an int of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


POSITIVE, NONNEGATIVE = count(1), count(0)


def fraction(text: str) -> float:
    """An argparse type: a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def num_factors(text: str):
    """``auto`` or a positive int: q, the number of latent factors."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 or auto, got {value}")
    return value


num_factors.__name__ = "q"


def device_name(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether the device exists is checked when the command
    runs, so that the parser and ``--help`` import no torch)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text


device_name.__name__ = "device"


def training_length(text: str):
    """``auto`` or a fraction in (0, 1] of the schedule."""
    if text == "auto":
        return text
    value = fraction(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1] of the schedule or auto, got {value}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the message and where to find the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, but no "(default: None)" or "(default: False)": those flags are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help or ""
        if isinstance(action.default, (list, tuple)) and "%(default)" not in (action.help or ""):
            return f"{action.help} (default: {' '.join(map(str, action.default)) or 'none'})"  # as typed: 50 50
        return super()._get_help_string(action)


def add_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command's parser, with the help as its description and defaults shown."""
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)


def check_output_dir(path: str, name: str = "--output-dir") -> str:
    """Probe an output folder before the work starts (it is created when the first result is written)."""
    from pyro_dlf.arrays import check_writable

    check_writable(os.path.join(path, "results.json"), name)
    return path
