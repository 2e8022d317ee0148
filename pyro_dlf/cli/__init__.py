"""The ``pyro-dlf`` command line (entry point :func:`main`)."""

from pyro_dlf.cli.main import build_parser, flag_names, main, translate

__all__ = ["main", "build_parser", "flag_names", "translate"]
