"""Pretrained weights for the metrics: located offline, verified by SHA-256, never faked.

Inception-v3 (FID/KID/PRDC, torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`) and
AlexNet (LPIPS backbone, torchvision's `alexnet-owt-7be5be79.pth`) are looked up in `--weights-dir`
and in the torch hub cache (`$TORCH_HOME/hub/checkpoints`). The hex suffix of each file name is the
prefix of its SHA-256; a file that does not match is refused (torchmetrics would load any file of
that name silently). `python -m benchmark weights [--weights-dir DIR]` (`make weights`) downloads
both where the machine can reach the hosts; copy DIR to an offline cluster and pass --weights-dir.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from benchmark.errors import WeightsUnavailable

FIX_COMMAND = "make weights WEIGHTS_DIR=<dir> (on a machine with internet), then pass --weights-dir <dir>"


@dataclass(frozen=True)
class WeightFile:
    key: str
    filename: str
    url: str

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit("-", 1)[-1].split(".")[0]


WEIGHTS: dict[str, WeightFile] = {
    "inception": WeightFile("inception", "weights-inception-2015-12-05-6726825d.pth",
                            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                            "weights-inception-2015-12-05-6726825d.pth"),
    "alexnet": WeightFile("alexnet", "alexnet-owt-7be5be79.pth",
                          "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    dirs = [Path(weights_dir)] if weights_dir else []
    return dirs + [Path(torch.hub.get_dir()) / "checkpoints"]


@lru_cache(maxsize=16)
def _sha256(path: Path, mtime: float, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    st = path.stat()
    return _sha256(path, st.st_mtime, st.st_size)


def locate(key: str, weights_dir: str | Path | None = None) -> Path:
    """Path of verified weights `key` ("inception" | "alexnet").

    Raises:
        WeightsUnavailable: Not found in any search dir, or found with the wrong SHA-256.
    """
    wf = WEIGHTS[key]
    looked = []
    for d in search_dirs(weights_dir):
        path = d / wf.filename
        looked.append(str(d))
        if path.is_file():
            digest = sha256_of(path)
            if not digest.startswith(wf.sha256_prefix):
                raise WeightsUnavailable(f"{path} refused: SHA-256 {digest[:12]}... does not start with "
                                         f"{wf.sha256_prefix} (corrupt or not the reference file); delete it and run "
                                         f"{FIX_COMMAND}")
            return path
    raise WeightsUnavailable(f"{wf.filename} not found in {', '.join(looked)}; run {FIX_COMMAND}")


def download(key: str, weights_dir: str | Path | None = None) -> Path:
    """Download and verify weights `key` into `weights_dir` (default: the torch hub cache)."""
    wf = WEIGHTS[key]
    dest_dir = Path(weights_dir) if weights_dir else search_dirs()[-1]
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / wf.filename
    if not dest.is_file():
        try:
            torch.hub.download_url_to_file(wf.url, str(dest), hash_prefix=wf.sha256_prefix, progress=True)
        except Exception as exc:  # network errors come in many types
            raise WeightsUnavailable(f"could not download {wf.url} ({exc}); fetch it on a machine with internet "
                                     f"access and copy it to {dest_dir}") from exc
    return locate(key, dest_dir)
