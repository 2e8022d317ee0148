"""The command line's messages in its own words: library argument names translated to flags, one line each.

The library's messages name its own arguments (``teacher_outputs``); :func:`translate` rewrites them with a
command's table (:func:`pyro_dlf.cli.flag_names`), and :class:`Warnings` prints each distinct warning once.
"""

from __future__ import annotations

import re
import sys
import warnings

__all__ = ["translate", "one_line", "Warnings"]


# A quoted string (a path, a repr) is copied as it is; an apostrophe after a letter (teachers') opens none.
# A name preceded by a letter, dot, slash or hyphen is part of a word, path or flag.
_TOKEN = re.compile(r"""(?P<quoted>(?<!\w)'[^']*'|(?<!\w)"[^"]*")"""
                    r"""|(?<![\w./\\-])(?P<name>[A-Za-z_]\w*)(?P<assign>=(?P<q>['"]?)(?P<value>[^\s'",;)]*)(?P=q))?""")


def translate(message: str, names: dict[str, str]) -> str:
    """``message`` with the library argument names in ``names`` replaced by their flags.

    ``name=value`` becomes ``--flag value``, ``name=`` becomes ``--flag``. A
    snake_case name (and ``lr``) is translated wherever it stands; a plain word
    (``observed``, ``x``) only where it stands as an argument: first in the
    message, or before ``=``, ``:`` or ``[``. Quoted text, paths and longer
    words are left alone.
    """
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name is None or name not in names:
            return match.group(0)
        after = message[match.end("name"):match.end("name") + 2]
        if after[:1] in ("(", "/", "\\", "-") or (after[:1] == "." and after[1:].isalnum()):
            return match.group(0)  # a call, a path or an attribute, not the argument
        code_like = "_" in name or name == "lr"
        if not code_like and not (match.start() == 0 or match.group("assign") or after[:1] in (":", "[")):
            return match.group(0)
        flag = names[name]
        if match.group("value"):
            # A torch dtype is spelled by its short name on the command line (torch.float64 -> float64).
            return f"{flag} {match.group('value').removeprefix('torch.')}"
        following = message[match.end():match.end() + 1]
        return flag + (" " if match.group("assign") and following and not following.isspace() and following not in ",;.)" else "")

    return _TOKEN.sub(replace, message)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class Warnings:
    """Prints each distinct warning once, on one line, in the flags' words; others go their usual way."""

    def __init__(self, prefix: str, names: dict[str, str]):
        self.prefix, self.names, self.seen = prefix, names, set()
        self.fallback = warnings.showwarning

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
            # Third-party deprecations are for developers: shown (or recorded) as Python would.
            self.fallback(message, category, filename, lineno, file, line)
            return
        text = translate(one_line(str(message)), self.names)
        if (category, text) not in self.seen:
            self.seen.add((category, text))
            print(f"{self.prefix}: warning: {text}", file=sys.stderr, flush=True)
