"""The wheel carries every package of the source tree: setuptools is given an explicit list
(the SDK, the guest agent and the rootfs recipe live in three roots), so a new subpackage that
is not on it would work from a checkout and be missing from an installed wheel. No VM."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _packages_on_disk(root: Path, name: str) -> set[str]:
    return {".".join((name, *init.parent.relative_to(root).parts)).rstrip(".")
            for init in root.rglob("__init__.py")}


def test_every_subpackage_is_listed_for_the_wheel():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    on_disk = set()
    for name, folder in tool["package-dir"].items():
        on_disk |= _packages_on_disk(ROOT / folder, name)
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - on_disk == set(), "listed packages with no folder"
