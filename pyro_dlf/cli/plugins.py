"""Commands other packages add to ``pyro-dlf``: the ``pyro_dlf.commands`` entry points.

The lab (``pyro-dlf-bench``, in ``benchmarks/`` of a source checkout) registers ``bench`` and ``demo``. Each
entry point names an object with ``name``, ``help``, ``add_arguments(parser)``, ``run(args, command)`` and
``flag_names`` (see ``pyro_dlf_bench.cli.LabCommand``). When the lab is not installed, those two words still
parse and end in one line saying how to install it.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

__all__ = ["GROUP", "LAB_COMMANDS", "installed_commands", "MissingCommand"]

#: The entry-point group a package registers commands under.
GROUP = "pyro_dlf.commands"

#: The lab's commands, named in the help even when the lab is not installed.
LAB_COMMANDS = {"demo": "distill a small ensemble on the diabetes data and compare predictives",
                "bench": "benchmarks (results under benchmarks/results/)"}


class MissingCommand:
    """A lab command whose package is not installed: it takes any arguments and raises one clear error."""

    flag_names: dict = {}

    def __init__(self, name: str, help: str):
        self.name, self.help = name, f"{help} -- needs the lab: pip install ./benchmarks from a source checkout"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(self, args: argparse.Namespace, command: str) -> None:
        raise ImportError(f"'{self.name}' comes with the lab package pyro-dlf-bench, which is not installed; from a source "
                          "checkout run: pip install ./benchmarks")


def installed_commands() -> list:
    """The registered commands, then a :class:`MissingCommand` for each lab command not among them."""
    found = {}
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        try:
            found.setdefault(point.name, point.load())
        except ImportError:  # installed but broken (a missing dependency): treated as absent, with the same message
            continue
    for name, help in LAB_COMMANDS.items():
        found.setdefault(name, MissingCommand(name, help))
    return list(found.values())
