"""The generated skull-sim set: determinism, alignment, splits, 16-bit output, atomic writes."""
import json

import numpy as np
import pytest
from PIL import Image

from datasets import skull_sim
from datasets.skull_sim import DOMAINS, MANIFEST_COLUMNS, generate, is_complete, render_subject


def test_manifest_columns_counts_and_checksums(tiny):
    m = tiny.manifest
    assert set(MANIFEST_COLUMNS) <= set(m.columns)
    assert len(m) == 72 * 6 * len(DOMAINS)
    assert m["id"].is_unique
    for _, r in m.sample(10, random_state=0).iterrows():
        assert skull_sim.sha256_file(tiny.root / r["path"]) == r["checksum"]
    meta = json.loads((tiny.root / "dataset.json").read_text())
    assert meta["seconds"] > 0 and meta["n_images"] == len(m)  # the time is reported (README), not asserted


def test_splits_by_subject_disjoint_and_test_split_large_enough(tiny):
    m = tiny.manifest
    per_split = {s: set(m[m["split"] == s]["subject"]) for s in ("train", "val", "test", "ref")}
    assert set(m["split"]) == set(per_split)
    for a in per_split:
        for b in per_split:
            assert a == b or not (per_split[a] & per_split[b]), (a, b)
    assert {k: len(v) for k, v in per_split.items()} == {"test": 30, "ref": 18, "val": 8, "train": 16}
    assert m[(m["split"] == "test")]["scene"].nunique() == 180
    assert len(tiny.split_hash) == 16


def test_split_assignment_is_stable_and_sized():
    from datasets.splits import assign_splits, split_sizes

    subjects = [f"s{i:03d}" for i in range(40)]
    a = assign_splits(subjects, "x", 0)
    assert a == assign_splits(list(reversed(subjects)), "x", 0) and a != assign_splits(subjects, "x", 1)
    assert split_sizes(40) == {"test": 12, "ref": 6, "val": 4}
    more = assign_splits(subjects + ["s999"], "x", 0)  # adding a subject moves no held-out subject out
    assert sum(more[s] != a[s] for s in subjects) <= 1
    assert split_sizes(3) == {"test": 1, "ref": 0, "val": 0}
    with pytest.raises(ValueError, match="no training subject"):
        split_sizes(5, counts={"test": 3, "ref": 1, "val": 1})


def test_a_cached_folder_must_match_the_request(tmp_path, monkeypatch):
    """`generate --jitter` into the default folder used to be loaded as the aligned set; now every variant has its
    own folder and a folder holding another variant is refused with the fix."""
    from datasets.skull_sim import dataset_folder

    assert dataset_folder(tmp_path, "tiny", jitter=True) != dataset_folder(tmp_path, "tiny")
    assert dataset_folder(tmp_path, "tiny", seed=1) != dataset_folder(tmp_path, "tiny")
    monkeypatch.setattr(skull_sim, "PRESETS", {"tiny": skull_sim.Preset(size=16, n_subjects=5, views=("pa",),
                                                                        test=1, ref=1, val=1)})
    out = tmp_path / "ds"
    generate(out, "tiny", workers=1)
    assert generate(out, "tiny", workers=1) == out  # the same request reuses it
    for kwargs, field in ((dict(jitter=True), "jitter"), (dict(seed=3), "seed"), (dict(dicom=True), "dicom")):
        with pytest.raises(FileExistsError, match=f"{field}=.*--force"):
            generate(out, "tiny", workers=1, **kwargs)


def test_generation_is_deterministic(tmp_path, tiny):
    for d in ["paths", "masks"] + [f"images/{x}" for x in DOMAINS]:
        (tmp_path / d).mkdir(parents=True)
    rows = render_subject((tmp_path, 0, 4, "tiny", False))
    ref = tiny.manifest.set_index("id")
    for r in rows:
        assert r["checksum"] == ref.loc[r["id"], "checksum"], r["id"]
    rows_other_seed = render_subject((tmp_path, 1, 4, "tiny", False))
    assert any(a["checksum"] != b["checksum"] for a, b in zip(rows, rows_other_seed, strict=True))


def test_png_is_16_bit_not_squashed(tiny):
    path = tiny.root / tiny.manifest["path"].iloc[0]
    arr = np.array(Image.open(path))
    assert arr.dtype == np.uint16
    assert len(np.unique(arr)) > 256


def test_domains_of_a_scene_are_pixel_aligned(tiny):
    m = tiny.manifest
    scene = m["scene"].iloc[0]
    rows = m[m["scene"] == scene].sort_values("domain")
    imgs = tiny.load(rows)[:, 0].numpy()
    mask = np.array(Image.open(tiny.root / rows["mask_path"].iloc[0]))
    for img in imgs:
        # the object silhouette of every domain matches the label mask's object region
        obj = img > -0.85
        inter = (obj & (mask > 0)).sum() / max((obj | (mask > 0)).sum(), 1)
        assert inter > 0.9


def test_jitter_breaks_pixel_alignment_only_for_synthetic(tmp_path):
    for d in ["paths", "masks"] + [f"images/{x}" for x in DOMAINS]:
        (tmp_path / d).mkdir(parents=True)
    rows = render_subject((tmp_path, 0, 2, "tiny", True))
    by = {(r["view"], r["domain"]): np.array(Image.open(tmp_path / r["path"])) / 65535.0 for r in rows}
    mask = np.array(Image.open(tmp_path / "masks/s002_pa.png")) > 0
    iou = lambda img: ((img > 0.075) & mask).sum() / ((img > 0.075) | mask).sum()  # noqa: E731
    assert iou(by[("pa", "real_normal")]) > 0.9
    assert iou(by[("pa", "syn_high")]) < iou(by[("pa", "real_normal")])


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = skull_sim.render_subject

    def flaky(args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(skull_sim, "render_subject", flaky)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        generate(out, "tiny", workers=1)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_incomplete_folder_is_refused(tmp_path):
    out = tmp_path / "ds"
    (out / "images").mkdir(parents=True)
    (out / "manifest.csv").write_text("id\n")
    assert not is_complete(out)
    with pytest.raises(FileExistsError, match="not a complete"):
        generate(out, "tiny")


def test_dicom_round_trip_of_generated_image(tmp_path, tiny):
    from datasets.io import read_dicom, read_png, write_dicom_dx

    row = tiny.manifest.iloc[3].to_dict()
    dcm = tmp_path / "x.dcm"
    write_dicom_dx(dcm, tiny.root / row["path"], row)
    a = read_png(tiny.root / row["path"])
    b = read_dicom(dcm)
    np.testing.assert_allclose(a, b, atol=1.0 / 4095 + 1e-9)
    import pydicom

    ds = pydicom.dcmread(dcm)
    assert ds.Modality == "DX" and ds.BitsStored == 12 and ds.PhotometricInterpretation == "MONOCHROME2"


def test_label_mask_classes(tiny):
    mask = np.array(Image.open(tiny.root / tiny.manifest["mask_path"].iloc[0]))
    assert set(np.unique(mask)) == {0, 1, 2}
    assert mask[0, 0] == 0
    paths = np.load(tiny.root / tiny.manifest["paths_path"].iloc[0])
    assert paths["lengths"].shape[0] == len(paths["materials"]) and (paths["lengths"] >= 0).all()
