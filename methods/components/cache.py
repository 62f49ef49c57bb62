"""What methods derive from their training data and keep under the runner's cache folder (`FitData.cache_dir`):
one key per content, and files that are whole or absent."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch


def cache_key(content) -> str:
    """16 hex digits identifying `content` (JSON-serialisable; dict keys in any order; other values by `str`)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_whole(obj, path: Path) -> None:
    """`torch.save` to `path` through a temporary in the same folder: a reader finds the whole file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    torch.save(obj, tmp)
    tmp.replace(path)
