"""Commands other packages add to ``pyro-dlf``: the ``pyro_dlf.commands`` entry points.

The lab (``pyro-dlf-bench``, in ``benchmarks/`` of a source checkout) registers ``bench`` and ``demo``. Each
entry point names an object with ``name``, ``help``, ``add_arguments(parser)``, ``run(args, command)`` and
``flag_names`` (see ``pyro_dlf_bench.cli.LabCommand``). When the lab is not installed, those two words still
parse and end in one line saying how to install it.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Optional

__all__ = ["GROUP", "LAB_COMMANDS", "RESERVED", "installed_commands", "MissingCommand"]

#: The entry-point group a package registers commands under.
GROUP = "pyro_dlf.commands"

#: The lab's commands, named in the help even when the lab is not installed.
LAB_COMMANDS = {"demo": "distill a small ensemble on the diabetes data and compare predictives",
                "bench": "benchmarks (results under benchmarks/results/)"}


#: The library's own commands, which no package may replace.
RESERVED = ("distill", "predict")


class MissingCommand:
    """A lab command that cannot run here: it takes any arguments and raises one clear error saying why.

    :param name: the command's word.
    :param help: its one-line help.
    :param reason: why it is missing: ``None`` when the lab is not installed, else the import error of a broken install.
    """

    def __init__(self, name: str, help: str, reason: Optional[str] = None) -> None:
        self.name, self.reason, self.flag_names = name, reason, {}
        self.help = f"{help} -- needs the lab: pip install ./benchmarks from a source checkout"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(self, args: argparse.Namespace, command: str) -> None:
        if self.reason is not None:
            raise ImportError(f"'{self.name}' comes with the lab package pyro-dlf-bench, which is installed but does not "
                              f"import ({self.reason}); reinstall it: pip install ./benchmarks")
        raise ImportError(f"'{self.name}' comes with the lab package pyro-dlf-bench, which is not installed; from a source "
                          "checkout run: pip install ./benchmarks")


def installed_commands() -> list:
    """The registered commands (but none that would replace ``distill`` or ``predict``), then a
    :class:`MissingCommand` for each lab command not among them."""
    found, broken = {}, {}
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        if point.name in RESERVED or point.name in found:
            continue
        try:
            found[point.name] = point.load()
        except ImportError as error:  # installed but broken (a missing dependency): said when it is run
            broken[point.name] = str(error).splitlines()[0] if str(error) else type(error).__name__
    for name, help in LAB_COMMANDS.items():
        if name not in found:
            found[name] = MissingCommand(name, help, broken.get(name))
    return list(found.values())
