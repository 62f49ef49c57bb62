"""The paired upper bounds: aligned batches, their refusal on unaligned data, and what each method must learn."""
from dataclasses import replace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec
from benchmark.run.checks import check_data
from datasets.datamodule import TranslationDataModule
from methods import METHODS, get_method

PAIRED = [name for name, cls in METHODS.items() if cls.pairing == "paired"]


def test_the_paired_methods_are_registered_in_their_own_group():
    assert PAIRED == ["unet-regression", "pix2pix", "cdm"]
    assert {get_method(n).table_info()["group"] for n in PAIRED} == {"paired"}
    assert get_method("cyclegan").table_info()["group"] == "unpaired"
    assert get_method("identity").table_info()["group"] == "reference"


def test_paired_batches_hold_aligned_scenes_of_the_training_split(micro):
    dm = TranslationDataModule(micro, ("syn_low", "syn_high", "real_normal"), batch_size=8, pairing="paired",
                               target="real_normal")
    scene = dict(zip(micro.manifest["id"], micro.manifest["scene"], strict=True))
    split = dict(zip(micro.manifest["id"], micro.manifest["split"], strict=True))
    n = 0
    for batch in dm.train_dataloader():
        for ia, ib in zip(batch["id_a"], batch["id_b"], strict=True):
            assert scene[ia] == scene[ib] and split[ia] == split[ib] == "train"
            n += 1
        # the pair is pixel-exact: the same anatomy, so the two images correlate strongly
        a, b = batch["image_a"].flatten(1), batch["image_b"].flatten(1)
        r = torch.nn.functional.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True))
        assert (r > 0.5).all()
    train_sources = micro.rows(("syn_low", "syn_high"), "train")
    assert n == len(train_sources) // 8 * 8  # every source image once per epoch (drop_last)


def test_a_paired_method_refuses_data_without_pairs(micro, tmp_path, capsys):
    unaligned = replace(micro, aligned=False)
    with pytest.raises(RunError, match=r"pix2pix is a paired method: dataset skull-sim .* no pixel-exact pairs"):
        check_data(unaligned, RunSpec("pix2pix", preset="micro"))
    check_data(unaligned, RunSpec("cyclegan", preset="micro"))  # unpaired methods run on it
    with pytest.raises(ValueError, match="no pixel-exact pairs"):
        TranslationDataModule(unaligned, ("syn_low", "real_normal"), pairing="paired", target="real_normal")


def test_the_cli_stops_a_paired_method_on_a_folder_dataset_before_training(tmp_path, capsys):
    import yaml

    from benchmark.cli.main import main
    from datasets.io import write_png16

    for domain, offset in (("A", 0), ("B", 100)):
        (tmp_path / "data" / domain).mkdir(parents=True)
        for i in range(12):
            write_png16(tmp_path / "data" / domain / f"img{i:02d}.png",
                        np.random.default_rng(i + offset).uniform(0, 1, (32, 32)))
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"name": "toy", "domains": {"a": "A", "b": "B"}, "root": str(tmp_path / "data"),
                                   "aligned": False}))
    argv = ["run", "--dataset", "folder", "--dataset-config", str(cfg), "--task", "a->b", "--results-dir",
            str(tmp_path / "results"), "--quiet", "--no-frd"]
    assert main(argv[:1] + ["--method", "cdm"] + argv[1:]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cdm is a paired method: dataset toy") and "aligned: false" in err and "\n" not in err
    assert not (tmp_path / "results" / "runs" / "cdm").exists()  # nothing trained, nothing written


def _fit_toy(method, pairs, steps):
    """Train `method` on an in-memory list of (source, target) batches for `steps` iterations."""
    batches = [{"image_a": a, "image_b": b} for a, b in pairs]
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=steps * type(method).optimizer_steps_per_iteration)
    trainer.fit(method, loader)
    return method.eval()


def _smooth_images(n, size=16, seed=0):
    """Smooth random images in [-0.8, 0.8] (blurred noise), so a map between them is learnable at 16 px."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    k = torch.ones(1, 1, 5, 5) / 25
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="circular"), k)
    return (0.8 * x / x.abs().amax(dim=(1, 2, 3), keepdim=True)).clamp(-1, 1)


def test_the_regression_cnn_recovers_a_known_intensity_map():
    """Target = 0.5 * source - 0.3 (an affine intensity map): the fitted network reproduces it on held-out images."""
    torch.manual_seed(0)
    cls = get_method("unet-regression")
    method = cls(domains=("a", "b"), sources=("a",), target="b", image_size=16, ngf=8, lr=3e-3, warmup_steps=10,
                 max_steps=300, batch_size=16)
    x = _smooth_images(256)
    target = lambda s: 0.5 * s - 0.3  # noqa: E731
    method = _fit_toy(method, [(x[i:i + 16], target(x[i:i + 16])) for i in range(0, 256, 16)], 300)
    held_out = _smooth_images(32, seed=1)
    y = method.translate(held_out, "a", "b")
    err = (y - target(held_out)).abs().mean().item()
    assert err < 0.05 and err < 0.2 * (held_out - target(held_out)).abs().mean().item()


def test_pix2pix_discriminator_judges_source_image_pairs(micro):
    """Every discriminator input is (source, image): its first channel is the batch's source image, and the real
    pair's second channel is the aligned target."""
    cls = get_method("pix2pix")
    torch.manual_seed(0)
    method = cls(domains=micro.domains, sources=("syn_low",), target="real_normal", image_size=micro.size,
                 **cls.smoke_settings)
    seen = []
    method.d.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    dm = TranslationDataModule(micro, ("syn_low", "real_normal"), batch_size=1, pairing="paired", target="real_normal")
    batch = next(iter(dm.train_dataloader()))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=2)
    trainer.fit(method, DataLoader([batch], batch_size=None))
    assert len(seen) == 3  # D(fake) and D(real) for the discriminator step, D(fake) for the generator's
    for inp in seen:
        assert inp.shape[1] == 2 and torch.equal(inp[:, :1], batch["image_a"])
    assert sum(torch.equal(inp[:, 1:], batch["image_b"]) for inp in seen) == 1  # the real pair, once
    # and translation runs its dropout as noise, reproducibly
    x = micro.images("syn_low", "test")[0][:2]
    assert torch.equal(method.translate(x, "syn_low", "real_normal"), method.translate(x, "syn_low", "real_normal"))


def test_cdm_representation_model_reconstructs_masked_patches():
    """On a toy family with two degrees of freedom (a bright disc at a random position), the masked-patch
    autoencoder learns to fill in masked patches far better than their mean value would."""
    from methods.components.cdm_nets import RepresentationModel, patch_mask

    def discs(n, seed):
        g = torch.Generator().manual_seed(seed)
        centre = torch.rand(n, 2, generator=g) * 8 + 4
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        d2 = (yy[None] - centre[:, :1, None]) ** 2 + (xx[None] - centre[:, 1:, None]) ** 2
        return (torch.sigmoid(9.0 - d2) * 1.6 - 0.8)[:, None]

    torch.manual_seed(0)
    mrm = RepresentationModel(16, channels=16, dim=16, patch=4, mask_ratio=0.5)
    opt = torch.optim.Adam(mrm.parameters(), lr=2e-3)
    for step in range(400):
        loss = mrm.loss(discs(32, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = discs(64, 10_000)
    mask = patch_mask(x.shape, 4, 0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = mrm.loss(x, mask).item()
    baseline = (((x - x.mean()) ** 2) * mask).sum().item() / mask.sum().item()
    assert err < 0.25 * baseline
