"""Print pip constraints that pin every runtime dependency of pyproject.toml to its lower bound.

`make test-oldest` installs with them, so the suite also runs on the oldest versions
the project declares (the test extra is left free: it is not what users install).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def lower_bounds(pyproject: dict) -> dict[str, str]:
    project = pyproject["project"]
    requirements = list(project.get("dependencies", []))
    for extra, listed in project.get("optional-dependencies", {}).items():
        if extra != "test":
            requirements += listed
    pins: dict[str, str] = {}
    for requirement in requirements:
        name, rest = LOWER_BOUND.match(requirement.split(";")[0]).groups()
        name = re.sub(r"[-_.]+", "-", name).lower()
        if name == project["name"]:
            continue  # an extra that names other extras
        bound = re.search(r">=\s*([^,\s]+)", rest)
        if bound is None:
            sys.exit(f"{requirement!r} has no lower bound (>=): declare the oldest version tested")
        if pins.get(name, bound.group(1)) != bound.group(1):
            sys.exit(f"{name} has two lower bounds: {pins[name]} and {bound.group(1)}")
        pins[name] = bound.group(1)
    return pins


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    for name, version in sorted(lower_bounds(tomllib.loads(path.read_text())).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
