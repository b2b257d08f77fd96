"""Loading the golden vectors in protocol/vectors/ (shared by the Python and Swift tests)."""

import json
from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parents[1] / "protocol" / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTOR_DIR / f"{name}.json").read_text())


def value(v):
    """A vector's JSON value as the msgpack value it stands for ({"$bin": hex} is bytes)."""
    if isinstance(v, dict) and set(v) == {"$bin"}:
        return bytes.fromhex(v["$bin"])
    if isinstance(v, dict):
        return {k: value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [value(x) for x in v]
    return v
