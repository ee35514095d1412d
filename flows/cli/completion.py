"""`sam2ct completion SHELL`: the shell completion script, generated from the parser (shtab).

    eval "$(sam2ct completion bash)"                           # this shell
    sam2ct completion bash > ~/.local/share/bash-completion/completions/sam2ct
    sam2ct completion zsh > "${fpath[1]}/_sam2ct"              # zsh
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from flows.cli.terminal import one_of

SHELLS = ("bash", "zsh", "tcsh", "fish")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``completion`` sub-command."""
    p = sub.add_parser("completion", help="print the shell completion script (bash, zsh...)",
                       description=__doc__.split("\n\n")[0].strip(),
                       epilog='e.g. eval "$(sam2ct completion bash)" in ~/.bashrc')
    p.add_argument("shell", **one_of(SHELLS), help="the shell: " + ", ".join(SHELLS))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the completion script of the whole ``sam2ct`` parser for ``args.shell``."""
    import shtab

    from flows.cli import build_parser

    parser = build_parser()
    for action in _actions(parser):
        if action.type is Path and not hasattr(action, "complete"):
            action.complete = shtab.FILE  # type: ignore[attr-defined]  # files and folders
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every action of ``parser`` and of its sub-commands, depth first."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _actions(child)
