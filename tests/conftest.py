"""Shared fixtures: one generated skull-sim tiny set per test session (about 20 s on 2 cores)."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    os.environ["XRAYBENCH_DATA"] = str(root)  # subprocesses (runner e2e) reuse the same data
    return root


@pytest.fixture(scope="session")
def tiny(data_root):
    from datasets import load_dataset

    return load_dataset("skull-sim", preset="tiny", data_root=data_root, seed=0)


@pytest.fixture(scope="session")
def micro(data_root):
    """skull-sim `micro` (32 px, 16 subjects, 3 views; a few seconds): for the runner's mechanics."""
    from datasets import load_dataset

    return load_dataset("skull-sim", preset="micro", data_root=data_root, seed=0)
