"""CycleGAN: reference architecture, pool behaviour, one step moves all four nets, determinism, unpaired data."""
import lightning as L
import pytest
import torch

from datasets.datamodule import TranslationDataModule
from methods.components.gan_nets import PatchDiscriminator, ResnetGenerator
from methods.components.image_pool import ImagePool
from methods.cyclegan import CycleGAN

DOMAINS = ("syn_low", "syn_high", "real_low", "real_normal", "real_high")


def test_generator_range_and_patchgan_receptive_field():
    g = ResnetGenerator(1, 1, ngf=8, n_blocks=2)
    y = g(torch.randn(2, 1, 64, 64) * 10)
    assert y.shape == (2, 1, 64, 64) and y.abs().max() <= 1.0  # tanh output
    d = PatchDiscriminator(1, ndf=8, n_layers=3)
    assert d(torch.randn(1, 1, 70, 70)).shape[-2:] == (6, 6)
    # receptive field of the conv stack (instance norm is global, so measure it from the layers): 70 px
    rf, jump = 1, 1
    for conv in (m for m in d.modules() if isinstance(m, torch.nn.Conv2d)):
        rf += (conv.kernel_size[0] - 1) * jump
        jump *= conv.stride[0]
    assert rf == 70
    assert CycleGAN(DOMAINS, DOMAINS[:2], "real_normal", 64, ngf=8, ndf=8).g_ab.model[-2].out_channels == 1
    assert len([m for m in CycleGAN(DOMAINS, DOMAINS[:2], "real_normal", 64, ngf=8, ndf=8).g_ab.modules()
                if type(m).__name__ == "ResnetBlock"]) == 6  # 6 blocks at <= 128 px


def test_image_pool_returns_stored_images_half_the_time_once_full():
    pool = ImagePool(size=5, generator=torch.Generator().manual_seed(0))
    first = torch.arange(5.0).view(5, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as is
    new = torch.arange(100.0, 2100.0).view(2000, 1, 1, 1)  # distinct values: a returned value != own is history
    out = pool.query(new)
    from_history = (out != new).float().mean().item()
    assert from_history == pytest.approx(0.5, abs=0.05)
    assert ImagePool(0).query(new) is new


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image_a": torch.rand(1, 1, 32, 32, generator=g) * 2 - 1,
            "image_b": torch.rand(1, 1, 32, 32, generator=g) * 2 - 1}


def _one_step(seed=0):
    torch.manual_seed(seed)
    model = CycleGAN(DOMAINS, DOMAINS[:2], "real_normal", 32, ngf=8, ndf=8, n_blocks=1, max_steps=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    loader = torch.utils.data.DataLoader([{k: v[0] for k, v in _batch(seed).items()}], batch_size=1)
    trainer.fit(model, train_dataloaders=loader)
    return model, before, trainer


def test_one_step_updates_both_generators_and_discriminators():
    model, before, _ = _one_step()
    for net in ("g_ab", "g_ba", "d_a", "d_b"):
        changed = any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith(net))
        assert changed, net


def test_same_seed_same_losses():
    a, _, ta = _one_step(0)
    b, _, tb = _one_step(0)
    for key in ("train/loss_g", "train/loss_d"):
        assert ta.callback_metrics[key] == tb.callback_metrics[key]
    c, _, tc = _one_step(1)
    assert tc.callback_metrics["train/loss_g"] != ta.callback_metrics["train/loss_g"]


def test_unpaired_batches_break_the_alignment(tiny):
    dm = TranslationDataModule(tiny, ("syn_low", "syn_high", "real_normal"), batch_size=1, pairing="unpaired",
                               target="real_normal")
    same_scene, n = 0, 0
    for batch in dm.train_dataloader():
        scene = lambda image_id: "_".join(image_id.split("_")[:2])  # noqa: E731  "s003_pa_syn_low" -> "s003_pa"
        same_scene += scene(batch["id_a"][0]) == scene(batch["id_b"][0])
        assert batch["domain_a"].item() != tiny.domain_index("real_normal")
        assert batch["domain_b"].item() == tiny.domain_index("real_normal")
        n += 1
    assert n == 2 * 96 and same_scene / n < 0.1  # 16 training subjects x 6 views per domain; chance level 1/96


def test_translate_directions_and_errors():
    model = CycleGAN(DOMAINS, DOMAINS[:2], "real_normal", 32, ngf=8, ndf=8, n_blocks=1).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(model.translate(x, "syn_low", "real_normal"), model.g_ab(x))
    torch.testing.assert_close(model.translate(x, "real_normal", "syn_high"), model.g_ba(x))
    with pytest.raises(KeyError, match="cannot translate"):
        model.translate(x, "real_low", "real_high")
    with pytest.raises(ValueError, match="no knob"):
        model.translate(x, "syn_low", "real_normal", 0.5)


def test_budget_counts_iterations_and_the_learning_rate_decays_to_zero(tiny):
    """`max_steps` = training_step calls. Lightning counts both optimizer steps of an iteration in `global_step`:
    before the fix max_steps=1000 stopped after 500 iterations and the linear decay never started."""
    calls = []

    class Counted(CycleGAN):
        def training_step(self, batch, batch_idx):
            calls.append(batch_idx)
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    model = Counted(tiny.domains, ("syn_low",), "real_normal", 64, ngf=4, ndf=4, n_blocks=1, max_steps=12)
    dm = TranslationDataModule(tiny, ("syn_low", "real_normal"), batch_size=1, pairing="unpaired",
                               target="real_normal")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **model.trainer_settings())
    trainer.fit(model, datamodule=dm)
    assert len(calls) == 12 and trainer.global_step == 24  # Lightning's count, pinned
    lr0 = model.hparams.lr
    for opt in trainer.optimizers:
        # constant for 6 iterations, then linear to 1/(half+1) of the initial rate after the last one
        assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 7)
    assert model.trainer_settings(5) == {"max_steps": 10}  # an explicit budget is iterations too
