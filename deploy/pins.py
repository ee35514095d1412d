"""Print the requirements that pyproject.toml declares for the named packages.

The pins of torch, torchvision and sam2 are declared once, in pyproject.toml; the Makefile and
the Dockerfiles install those packages first (sam2 builds against the installed torch) by asking
this script for them:

    pip install $(python3 deploy/pins.py torch torchvision)

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared(names: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The dependency strings of ``names``, in that order; KeyError naming one not declared."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    by_name = {re.match(r"[A-Za-z0-9._-]+", d).group().lower(): d for d in deps}
    return [by_name[name.lower()] for name in names]


if __name__ == "__main__":
    try:
        print(" ".join(declared(sys.argv[1:])))
    except KeyError as exc:
        sys.exit(f"pins.py: {exc.args[0]} is not a dependency in {PYPROJECT}")
