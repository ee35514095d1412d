"""`sam2ct model inspect PATH [--json]`: what a SAM2CT checkpoint holds and whether it loads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dicom_io.printable import printable


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``model`` sub-command group."""
    parser = sub.add_parser("model", help="inspect SAM2CT checkpoints")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = actions.add_parser("inspect", help="parameters, point embeddings, key report, SHA-256")
    inspect.add_argument("path", type=Path, help="checkpoint file (.pt)")
    inspect.add_argument("--json", action="store_true", help="one JSON document on stdout")
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    """Print the checkpoint report; exit 1 when the file would not load as SAM2CT."""
    from sam2ct.model.checkpoint import CheckpointError, inspect_checkpoint

    try:
        report, _, _ = inspect_checkpoint(args.path)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from exc
    data = report.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(_text(data))
    return 0 if report.loadable else 1


def _text(data: dict) -> str:
    from sam2ct.model.config import CONVENTIONS

    lines = [f"file:             {data['path']}", f"sha256:           {data['sha256']}",
             f"kind:             {data['kind']} ({'loads' if data['loadable'] else 'DOES NOT LOAD'})",
             f"parameters:       {data['parameters']:,}",
             f"point embeddings: {data['point_embeddings']}",
             f"conventions:      {data['conventions']}"]
    lines += [f"  {name} = {data['config'][name]}" for name in CONVENTIONS]
    for name in ("missing_keys", "unexpected_keys", "shape_mismatches"):
        keys = data[name]
        lines.append(f"{name.replace('_', ' ') + ':':18}{len(keys)}")
        lines += [f"  {k}" for k in keys[:20]] + ([f"  ... {len(keys) - 20} more"]
                                                  if len(keys) > 20 else [])
    return "\n".join(printable(line) for line in lines)  # key names come from the file
