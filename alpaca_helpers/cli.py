"""The one flag spelling of every command: `--num_instructions`, as the Hugging Face and accelerate CLIs write them.

`--num-instructions` is accepted silently, so commands published with hyphens keep working; `--help` shows one name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def underscored(arg: str, known: set[str]) -> str:
    """`--a-b` or `--a-b=1` spelled `--a_b` when the parser knows `--a_b`; anything else unchanged."""
    if not arg.startswith("--") or arg == "--":
        return arg
    name, eq, value = arg.partition("=")
    spelled = "--" + name[2:].replace("-", "_")
    return spelled + eq + value if spelled in known else arg


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's flag spelling (see the module docstring); everything after `--` is left alone."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        known = set(self._option_string_actions)
        end = args.index("--") if "--" in args else len(args)
        args = [underscored(a, known) for a in args[:end]] + args[end:]
        return super().parse_known_args(args, namespace)
