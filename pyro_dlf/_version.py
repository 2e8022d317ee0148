"""The package's version, in one place (read by the package root, the student file and the command line)."""

__version__ = "0.1.0"
