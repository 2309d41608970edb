"""The weights that ship inside the package, with their model cards: what they are, read
without TensorFlow (settings and identities are decided before any model loads)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "deblock-deep"
WEIGHTS_PACKAGE = "dicom_cae.weights"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_card_list() -> list[dict[str, Any]]:
    """Model cards of all the weights that ship inside the package."""
    out = []
    root = resources.files(WEIGHTS_PACKAGE)
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            card = json.loads(entry.read_text())
            card["weights_path"] = str(root / card["weights_file"])
            out.append(card)
    return out
