"""Loaders: real CR files from pydicom-data, folder datasets, and every kind of bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from datasets import BadImageError, get_task, load_dataset
from datasets.datamodule import TranslationDataModule
from datasets.folder import scan_folder
from datasets.io import read_dicom, read_image, write_png16

pydicom_data = pytest.importorskip("pydicom.data")


def _cr(name):
    return Path(pydicom_data.get_testdata_file(name))


def test_cr_chest_monochrome1_is_inverted_exactly_once():
    img = read_dicom(_cr("RG1_UNCR.dcm"))
    h, w = img.shape
    spine = img[h // 3: 2 * h // 3, w // 2 - w // 20: w // 2 + w // 20].mean()
    lung = img[h // 3: 2 * h // 3, w // 4 - w // 20: w // 4 + w // 20].mean()
    assert spine > lung + 0.1  # radiographic display: mediastinum bright, lungs dark
    ds = pydicom.dcmread(_cr("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15


def test_cr_jpeg2000_decodes_like_uncompressed():
    pytest.importorskip("openjpeg")
    a, b = read_dicom(_cr("RG1_UNCR.dcm")), read_dicom(_cr("RG1_J2KR.dcm"))
    np.testing.assert_allclose(a, b, atol=1e-12)  # J2KR is lossless


def test_cr_10_bit_leg_window_and_range():
    ds = pydicom.dcmread(_cr("RG3_UNCR.dcm"))
    raw = ds.pixel_array.astype(float)
    img = read_dicom(_cr("RG3_UNCR.dcm"))
    assert ds.BitsStored == 10 and raw.max() < 1024
    assert 0.0 <= img.min() and img.max() <= 1.0
    # independent window: WC/WW linear (DICOM C.11.2.1.2), then MONOCHROME1 inversion
    c, wdt = float(ds.WindowCenter), float(ds.WindowWidth)
    ref = np.clip(((raw - (c - 0.5)) / (wdt - 1) + 0.5), 0, 1)
    np.testing.assert_allclose(img, 1 - ref, atol=2e-3)


def _write_domain(root, domain, n=3, size=32, start=0):
    d = root / domain
    d.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        write_png16(d / f"img{i:02d}.png", np.random.default_rng(i).uniform(0, 1, (size, size)))
    return d


CFG = {"name": "toy", "domains": {"a": "A", "b": "B"}}


def test_folder_dataset_loads_and_splits(tmp_path):
    _write_domain(tmp_path, "A", n=6)
    _write_domain(tmp_path, "B", n=6)
    ds = scan_folder(CFG, tmp_path)
    assert ds.domains == ("a", "b") and ds.size == 32 and len(ds.manifest) == 12
    x, rows = ds.images("a", ds.manifest["split"].iloc[0])
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1


def test_folder_resize_with_stated_interpolation(tmp_path):
    _write_domain(tmp_path, "A", n=2, size=40)
    _write_domain(tmp_path, "B", n=2, size=64)
    with pytest.raises(BadImageError, match="mixed image sizes.*size: N"):
        scan_folder(CFG, tmp_path)
    ds = scan_folder(dict(CFG, size=16, interpolation="area"), tmp_path)
    x = ds.load(ds.rows("b"))
    assert x.shape[-2:] == (16, 16)
    arr = np.array(Image.open(tmp_path / "B/img00.png")) / 65535.0
    ref = arr.reshape(16, 4, 16, 4).mean(axis=(1, 3)) * 2 - 1  # area = box average
    np.testing.assert_allclose(x[0, 0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["corrupt_dicom", "truncated_dicom", "no_pixels", "rgb_png", "volume_tiff",
                                  "nan_tiff"])
def test_bad_files_are_named(tmp_path, kind):
    import tifffile

    d = _write_domain(tmp_path, "A", n=2)
    _write_domain(tmp_path, "B", n=2)
    bad = d / {"rgb_png": "bad.png", "volume_tiff": "bad.tif", "nan_tiff": "bad.tif"}.get(kind, "bad.dcm")
    if kind == "corrupt_dicom":
        bad.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 10)
    elif kind == "truncated_dicom":
        bad.write_bytes(_cr("RG3_UNCR.dcm").read_bytes()[:5000])
    elif kind == "no_pixels":
        ds = pydicom.dcmread(_cr("RG3_UNCR.dcm"))
        del ds.PixelData
        ds.save_as(bad)
    elif kind == "rgb_png":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad)
    elif kind == "volume_tiff":
        tifffile.imwrite(bad, np.zeros((4, 8, 8), np.uint16))
    else:
        tifffile.imwrite(bad, np.full((32, 32), np.nan, np.float32))
    with pytest.raises(BadImageError, match=str(bad.name)):
        scan_folder(CFG, tmp_path)
    ds = scan_folder(CFG, tmp_path, skip_bad=True)
    assert len(ds.config["skipped"]) == 1 and bad.name in ds.config["skipped"][0]
    assert len(ds.manifest) == 4
    assert len(scan_folder(dict(CFG, skip_bad=True), tmp_path).manifest) == 4  # the YAML key, as the CLI passes it


def test_missing_and_empty_domain_folders(tmp_path):
    _write_domain(tmp_path, "A", n=2)
    with pytest.raises(FileNotFoundError, match="domain 'b'.*folders present: A"):
        scan_folder(CFG, tmp_path)
    (tmp_path / "B").mkdir()
    with pytest.raises(FileNotFoundError, match="domain 'b'.*hold no"):
        scan_folder(CFG, tmp_path)
    with pytest.raises(BadImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        scan_folder(CFG, tmp_path / "missing")


def test_registry_tasks_and_errors(tiny):
    with pytest.raises(KeyError, match="available: skull-sim"):
        load_dataset("nope")
    with pytest.raises(KeyError, match="tiny, small, paper"):
        load_dataset("skull-sim", preset="huge")
    t = get_task("sim2real", tiny.domains)
    assert t.sources == ("syn_low", "syn_high") and t.target == "real_normal"
    assert get_task("dose").target == "real_high"
    with pytest.raises(KeyError, match="does not have"):
        get_task("syn_low->ct", tiny.domains)


def test_datamodule_batches_and_counterparts(tiny):
    dm = TranslationDataModule(tiny, ("syn_low", "real_normal"), batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 64, 64) and batch["domain"].dtype == torch.long
    assert set(batch["domain"].tolist()) <= {tiny.domain_index("syn_low"), tiny.domain_index("real_normal")}
    assert all(isinstance(i, str) for i in batch["id"])
    x, rows = tiny.images("syn_high", "test")
    gt, reason = tiny.counterparts(rows, "real_normal")
    assert reason is None and gt.shape == x.shape
    assert set(rows["split"]) == {"test"}


class _DrawsB(torch.utils.data.Dataset):
    """The previous unpaired dataset: item i = (i, a B index drawn by its own generator per fetch)."""

    def __init__(self, n, n_b, seed):
        self.n, self.n_b, self.g = n, n_b, torch.Generator().manual_seed(seed + 1)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (i, int(torch.randint(0, self.n_b, (), generator=self.g)))


@pytest.mark.parametrize("n, batch_size, drop_last", [(37, 16, True), (37, 16, False), (32, 16, True), (5, 16, False)])
@pytest.mark.parametrize("n_b", [None, 7])
def test_batch_stream_serves_what_a_shuffled_dataloader_serves_epoch_after_epoch(n, batch_size, drop_last, n_b):
    """Library semantics pinned: Lightning takes len(loader) batches per epoch; for them DataLoader draws a base
    seed and RandomSampler a permutation (plus a trailing one before a partial last batch). The stream
    reproduces that, so resumable training kept the numbers of earlier runs."""
    import itertools

    from datasets.datamodule import BatchStream

    ref_ds = _DrawsB(n, n_b, 3) if n_b else list(range(n))
    loader = torch.utils.data.DataLoader(ref_ds, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                                         generator=torch.Generator().manual_seed(3), collate_fn=list)
    expected = [batch for _ in range(5) for batch in itertools.islice(loader, len(loader))]
    stream = dict(n=n, batch_size=batch_size, drop_last=drop_last, seed=3, n_b=n_b)
    per_epoch = BatchStream(**stream)
    assert [list(map(tuple, b)) if n_b else b for _ in range(5) for b in per_epoch] == [
        list(map(tuple, b)) if n_b else b for b in expected]
    whole = list(BatchStream(**stream, iterations=len(expected)))
    assert len(whole) == len(expected) and [b for b in BatchStream(**stream, iterations=len(expected), start=4)] \
        == whole[4:]
    with pytest.raises(ValueError, match="fixed number of iterations"):
        BatchStream(**stream, start=2)


@pytest.mark.parametrize("drop_last, n", [(True, 10), (False, 10), (False, 12)])
def test_lightning_serves_a_shuffled_loader_as_the_batch_stream(drop_last, n):
    """What a fit saw before the stream existed (Lightning iterating a shuffled DataLoader over 3+ epochs) is
    what it sees now."""
    import lightning as L

    from datasets.datamodule import BatchStream

    class Seen(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w, self.seen = torch.nn.Parameter(torch.zeros(1)), []

        def training_step(self, batch, i):
            self.seen.append([int(v) for v in batch])
            return (self.w * 0).sum() + self.w.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def seen(loader, steps=11):
        m = Seen()
        L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                  enable_model_summary=False, accelerator="cpu").fit(m, loader)
        return m.seen

    data = list(range(n))
    shuffled = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, drop_last=drop_last,
                                           generator=torch.Generator().manual_seed(5))
    stream = BatchStream(n, 4, drop_last, 5, iterations=11)
    assert seen(torch.utils.data.DataLoader(data, batch_sampler=stream)) == seen(shuffled)


def test_package_name_resolves_here():
    """Our `datasets` package wins over Hugging Face's when run from the repository root."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", "import datasets; print(datasets.__file__)"], cwd=root,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).resolve().is_relative_to(root)


def test_a_folder_dataset_runs_end_to_end_and_is_scanned_once(tmp_path, monkeypatch):
    """The CLI learns a folder dataset's domains by loading it, and hands that dataset to the runner."""
    import yaml

    import datasets.folder as folder
    from benchmark.cli.main import main

    _write_domain(tmp_path / "data", "A", n=12)
    _write_domain(tmp_path / "data", "B", n=12, start=100)
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(dict(CFG, root=str(tmp_path / "data"))))
    calls = []
    real = folder.scan_folder
    monkeypatch.setattr(folder, "scan_folder", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["run", "--method", "identity", "--dataset", "folder", "--dataset-config", str(cfg), "--task",
                 "a->b", "--results-dir", str(tmp_path / "results"), "--quiet", "--no-frd"]) == 0
    assert len(calls) == 1
    recs = [json.loads(line) for f in (tmp_path / "results").glob("runs/*/*/*/records.jsonl") for line in f.open()]
    test = [r for r in recs if r["split"] == "test"]
    assert test and test[0]["ssim_gt"] is None and "pixel-aligned" in test[0]["unavailable"]["ssim_gt"]
