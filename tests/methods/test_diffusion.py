"""Shared diffusion core, SDEdit and ContourDiff against closed forms and their stated behaviour."""
import numpy as np
import pytest
import torch

from methods.components.contours import contour_map
from methods.components.diffusion import DiffusionCore
from methods.contourdiff import ContourDiff
from methods.sdedit import SDEdit

DOMAINS = ("syn_low", "syn_high", "real_low", "real_normal", "real_high")


def test_schedule_and_forward_marginal_match_closed_form():
    core = DiffusionCore()
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    np.testing.assert_allclose(core.alphas_cumprod.numpy(), alpha_bar, rtol=1e-5)
    x_0 = torch.full((20000, 1, 1, 1), 0.6)
    for t in (10, 300, 900):
        x_t = core.train_scheduler.add_noise(x_0, torch.randn_like(x_0), torch.full((20000,), t))
        # q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)
        assert x_t.mean().item() == pytest.approx(np.sqrt(alpha_bar[t]) * 0.6, abs=0.02)
        assert x_t.var().item() == pytest.approx(1 - alpha_bar[t], rel=0.05, abs=2e-4)


def test_strength_noises_to_exactly_t0_times_T():
    """SDEdit's t0 is a fraction of T: strength 0.1 / 0.2 / 0.3 starts at t = 100 / 200 / 300 (the bug this pins:
    diffusers' img2img keeps the last int(n * strength) steps of its leading grid and started at 80 / 180 / 280)."""
    from diffusers import DDPMScheduler

    core = DiffusionCore(num_inference_steps=50)
    for strength, t0 in ((0.1, 100), (0.2, 200), (0.3, 300), (1.0, 999)):
        ts = core.timesteps_for(strength)
        assert int(ts[0]) == t0 and len(ts) == round(50 * strength) and (ts.diff() < 0).all() and int(ts[-1]) > 0
    assert len(core.timesteps_for(0.0)) == 0 and core.nfe(0.3) == 15 and core.nfe(1.0) == 50
    leading = DDPMScheduler(num_train_timesteps=1000)
    leading.set_timesteps(50)
    assert [int(leading.timesteps[50 - int(50 * s)]) for s in (0.1, 0.2, 0.3)] == [80, 180, 280]  # the old grid
    seen = []

    def spy(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    x = torch.zeros(1, 1, 4, 4)
    core.denoise_from(spy, x, 0.2, torch.Generator().manual_seed(0))
    assert seen == list(range(200, 0, -20))  # 10 steps of T/50, the last one lands on x_0
    # the forward process took the start to t0: with a zero image x_t0 = sqrt(1 - a_t0) * noise exactly
    ab = core.alphas_cumprod
    captured = []
    core.denoise_from(lambda x_t, t: captured.append(x_t.clone()) or torch.zeros_like(x_t), x, 0.2,
                      torch.Generator().manual_seed(0))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(captured[0], (1 - ab[200]).sqrt() * noise)
    with pytest.raises(ValueError, match="strength"):
        core.timesteps_for(1.5)


def _eps_zero(x, t):
    return torch.zeros_like(x)


def test_strength_zero_returns_source_and_ddim_is_deterministic():
    core = DiffusionCore(num_inference_steps=20)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(core.denoise_from(_eps_zero, x, 0.0), x)
    a = core.denoise_from(_eps_zero, x, 0.5, torch.Generator().manual_seed(1))
    b = core.denoise_from(_eps_zero, x, 0.5, torch.Generator().manual_seed(1))
    c = core.denoise_from(_eps_zero, x, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampler_with_exact_noise_prediction_recovers_the_start_image(sampler):
    """If eps_theta returns the true noise, DDIM (eta 0) maps x_t back to x_0 exactly, and so does the
    ancestral sampler: every posterior q(x_{t-1} | x_t, x_0) is centred on the same x_0 and the last step
    (alpha_bar_prev = 1) has zero variance."""
    core = DiffusionCore(sampler=sampler, num_inference_steps=25)
    x_0 = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    ab = core.alphas_cumprod

    def oracle(x_t, t):  # the noise consistent with x_0: (x_t - sqrt(a) x_0) / sqrt(1 - a)
        a = ab[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x_0) / (1 - a).sqrt()

    out = core.denoise_from(oracle, x_0, 0.6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x_0, atol=1e-4, rtol=0)


def test_a_single_step_makes_the_ancestral_and_ddim_samplers_the_same_map():
    """Where round(n_steps * strength) is 1 (SDEdit's 10-step candidates at its default strength 0.1), both samplers
    take one step from t0 to x_0 and return the clipped x_0 prediction (x_t0 - sqrt(1 - a) eps) / sqrt(a): diffusers'
    ancestral step to alpha_bar_prev = 1 has zero variance and weight 0 on x_t. This is why sampling.md shows
    ddpm-10 and ddim-10 with identical validation scores; with two or more steps they differ."""
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    seen = []

    def eps_model(x_t, t):  # any prediction will do; records what it was asked and what it answered
        eps = 0.3 * x_t + 0.1
        seen.append((x_t.clone(), int(t[0]), eps))
        return eps

    out = {}
    for sampler in ("ddpm", "ddim"):
        core = DiffusionCore(sampler=sampler, num_inference_steps=10)
        seen.clear()
        out[sampler] = core.denoise_from(eps_model, x, 0.1, torch.Generator().manual_seed(3))
        assert [t for _, t, _ in seen] == [100]
    x_t, _, eps = seen[0]
    a = core.alphas_cumprod[100]
    x0_hat = ((x_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    torch.testing.assert_close(out["ddpm"], x0_hat, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["ddim"], x0_hat, atol=1e-5, rtol=0)
    two = {s: DiffusionCore(sampler=s, num_inference_steps=20).denoise_from(eps_model, x, 0.1,
                                                                            torch.Generator().manual_seed(3))
           for s in ("ddpm", "ddim")}
    assert (two["ddpm"] - two["ddim"]).abs().max() > 1e-3


def test_contours_find_the_skull_outline_and_nothing_on_constant(tiny):
    x, rows = tiny.images("real_high", "test")
    edges = contour_map(x[:4]) > 0
    mask = torch.from_numpy(np.stack([np.array(__import__("PIL.Image").Image.open(tiny.root / p))
                                      for p in rows["mask_path"][:4]]))
    from scipy import ndimage
    for i in range(4):
        head = mask[i].numpy() > 0
        outline = head & ~ndimage.binary_erosion(head, border_value=1)  # 1-px boundary, image border excluded
        near_edge = ndimage.binary_dilation(edges[i, 0].numpy(), iterations=2)
        assert (outline & near_edge).sum() / outline.sum() > 0.6, i  # most of the head outline is found
    assert edges.float().mean() < 0.3
    assert not (contour_map(torch.full((2, 1, 32, 32), 0.3)) > 0).any()


@pytest.mark.parametrize("cls, knob_max", [(SDEdit, 0.8), (ContourDiff, 1.0)])
def test_translation_stays_closer_to_source_at_low_knob(cls, knob_max):
    torch.manual_seed(0)
    m = cls(DOMAINS, DOMAINS[:2], "real_normal", 16, base_channels=8, channel_mults=(1, 2),
            num_inference_steps=10).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    near = (m.translate(x, "syn_low", "real_normal", 0.1) - x).abs().mean()
    far = (m.translate(x, "syn_low", "real_normal", knob_max) - x).abs().mean()
    assert near < far
    assert torch.equal(m.translate(x, "syn_low", "real_normal", 0.0), x)
    assert m.nfe(0.1) == 1 and m.nfe(knob_max) == int(10 * knob_max)
    with pytest.raises(KeyError, match="trained on"):
        m.translate(x, "syn_low", "real_high", 0.5)
    assert cls.training_domains(DOMAINS, DOMAINS[:2], "real_normal") == ("real_normal",)


@pytest.mark.parametrize("cls", [SDEdit, ContourDiff])
def test_both_ddpm_methods_compose_one_target_ddpm_and_load_checkpoints_from_before_it(cls):
    """SDEdit and ContourDiff share TargetDDPM (training, EMA, sampling); weights saved when the tensors sat on the
    method itself (`net.*`, `ema.*`, `sample_seed`) still load, so finished runs can be re-scored."""
    from methods.components.target_ddpm import TargetDDPM

    kw = dict(domains=("a", "b"), sources=("a",), target="b", image_size=16, base_channels=8, channel_mults=(1, 2),
              num_inference_steps=4)
    torch.manual_seed(0)
    a = cls(**kw)
    assert isinstance(a.ddpm, TargetDDPM)
    legacy = {k.removeprefix("ddpm."): v for k, v in a.state_dict().items()}
    assert "sample_seed" in legacy and any(k.startswith("ema.shadow.") for k in legacy)
    torch.manual_seed(1)
    b = cls(**kw)
    assert int(b.ddpm.sample_seed) != int(a.ddpm.sample_seed)
    b.load_state_dict(legacy)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    knob = cls.knob_grid[0]
    assert torch.equal(a.translate(x, "a", "b", knob), b.translate(x, "a", "b", knob))
