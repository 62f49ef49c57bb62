"""MedShift against closed forms: the path, the solvers, tau, guidance, nfe."""
import math

import pytest
import torch

from methods.components.coupling import couple, sinkhorn_plan, sq_cost
from methods.components.paths import BridgePath, CondOTPath, make_path
from methods.components.solvers import integrate, n_steps
from methods.medshift import MedShift

DOMAINS = ("syn_low", "syn_high", "real_low", "real_normal", "real_high")


def test_cond_ot_path_matches_formula():
    sigma = 1e-4
    x_0, x_1 = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    s = CondOTPath(sigma).sample(x_0, x_1, t)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(s.x_t, (1 - (1 - sigma) * tt) * x_0 + tt * x_1)
    torch.testing.assert_close(s.dx_t, x_1 - (1 - sigma) * x_0)
    torch.testing.assert_close(s.x_t[0], x_0[0])  # t = 0: noise
    torch.testing.assert_close(s.x_t[-1], x_1[-1] + sigma * x_0[-1])  # t = 1: data (+ sigma_min noise)
    # the target is the time derivative of x_t (finite difference)
    eps = 1e-3
    fd = (CondOTPath(sigma).sample(x_0, x_1, t.clamp(max=1 - eps) + eps).x_t
          - CondOTPath(sigma).sample(x_0, x_1, t.clamp(max=1 - eps)).x_t) / eps
    torch.testing.assert_close(fd, s.dx_t, atol=1e-3, rtol=1e-3)


def test_bridge_path_matches_formula_and_reduces_to_the_linear_path():
    sigma = 0.3
    x_0, x_1, z = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    s = BridgePath(sigma).sample(x_0, x_1, t, z)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(s.x_t, (1 - tt) * x_0 + tt * x_1 + sigma * (tt * (1 - tt)).sqrt() * z)
    torch.testing.assert_close(s.x_t[0], x_0[0])  # pinned at both ends: noise at t = 0, data at t = 1
    torch.testing.assert_close(s.x_t[-1], x_1[-1])
    assert torch.isfinite(s.dx_t).all()  # the diverging z coefficient is clipped at t in {0, 1}
    # inside (0, 1) the target is the time derivative of x_t (central finite difference, same z)
    ti, eps = torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8]), 1e-3
    fd = (BridgePath(sigma).sample(x_0, x_1, ti + eps, z).x_t - BridgePath(sigma).sample(x_0, x_1, ti - eps, z).x_t)
    torch.testing.assert_close(fd / (2 * eps), BridgePath(sigma).sample(x_0, x_1, ti, z).dx_t, atol=1e-3, rtol=1e-3)
    lin = BridgePath(0.0).sample(x_0, x_1, t, z)
    ref = CondOTPath(0.0).sample(x_0, x_1, t)
    torch.testing.assert_close(lin.x_t, ref.x_t)
    torch.testing.assert_close(lin.dx_t, ref.dx_t)
    with pytest.raises(ValueError, match="path"):
        make_path("sde")
    with pytest.raises(ValueError, match="bridge_sigma"):
        make_path("bridge", bridge_sigma=-1.0)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_bridge_target_regressed_on_x_t_is_the_probability_flow_velocity(t):
    """Point-mass data c, noise N(0, 1): x_t ~ N(t c, s_t^2), s_t^2 = (1-t)^2 + sigma^2 t (1-t). The ODE with these
    marginals has velocity c + (s_t'/s_t)(x - t c); E[dx_t | x_t] must be exactly that (jointly Gaussian, so linear)."""
    sigma, c, n = 0.5, 0.7, 400_000
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randn(n, 1, generator=g, dtype=torch.float64)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    s = BridgePath(sigma).sample(x_0, torch.full_like(x_0, c), torch.full((n,), t), z)
    x, u = s.x_t.squeeze(1), s.dx_t.squeeze(1)
    slope = ((x - x.mean()) * (u - u.mean())).mean() / x.var()
    intercept = u.mean() - slope * x.mean()
    var = (1 - t) ** 2 + sigma**2 * t * (1 - t)
    expected = (-(1 - t) + sigma**2 * (1 - 2 * t) / 2) / var  # s_t' / s_t
    assert float(slope) == pytest.approx(expected, abs=0.01)
    assert float(intercept) == pytest.approx(c - expected * t * c, abs=0.01)


def test_minibatch_ot_coupling_is_the_optimal_assignment():
    import itertools

    g = torch.Generator().manual_seed(1)
    x_0, x_1 = torch.randn(6, 1, 3, 3, generator=g), torch.randn(6, 1, 3, 3, generator=g) + 1.0
    cost = sq_cost(x_0, x_1)
    best = min(sum(float(cost[p[j], j]) for j in range(6)) for p in itertools.permutations(range(6)))
    paired = couple(x_0, x_1, reg=0.0)
    assert sorted(paired.flatten().tolist()) == sorted(x_0.flatten().tolist())  # a permutation of the noise
    assert float(((paired - x_1) ** 2).sum()) == pytest.approx(best, rel=1e-6)
    assert float(((paired - x_1) ** 2).sum()) <= float(((x_0 - x_1) ** 2).sum())
    # Sinkhorn: uniform marginals; small reg -> the assignment, large reg -> the independent coupling
    for reg in (0.01, 1e4):
        plan = sinkhorn_plan(cost, reg)
        torch.testing.assert_close(plan.sum(0), torch.full((6,), 1 / 6, dtype=plan.dtype))
        torch.testing.assert_close(plan.sum(1), torch.full((6,), 1 / 6, dtype=plan.dtype))
    assert float((sinkhorn_plan(cost, 0.01) * cost).sum() * 6) == pytest.approx(best, rel=1e-3)
    torch.testing.assert_close(sinkhorn_plan(cost, 1e4), torch.full((6, 6), 1 / 36, dtype=cost.dtype), atol=1e-4,
                               rtol=0)
    sampled = couple(x_0, x_1, reg=0.01, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled, paired)


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_solvers_reach_analytic_end_point_with_their_order(method, order):
    a = -1.3  # dx/dt = a x + cos(t)  ->  closed-form solution below
    x0 = torch.tensor([0.7], dtype=torch.float64)

    def exact(t0, t1, x):
        p = lambda t: (-a * math.cos(t) + math.sin(t)) / (a * a + 1)  # noqa: E731  particular solution
        c = (x - p(t0)) * math.exp(-a * t0)
        return c * math.exp(a * t1) + p(t1)

    v = lambda x, t: a * x + math.cos(t)  # noqa: E731
    errs = []
    for h in (0.1, 0.05, 0.025):
        errs.append(abs(float(integrate(v, x0, 1.0, 0.3, h, method)) - exact(1.0, 0.3, 0.7)))
    ratios = [errs[i] / errs[i + 1] for i in range(2)]
    assert all(r == pytest.approx(2**order, rel=0.15) for r in ratios), ratios
    fwd = float(integrate(v, x0, 0.3, 1.0, 0.01, method))
    assert fwd == pytest.approx(exact(0.3, 1.0, 0.7), abs=0.01 if order == 1 else 1e-4)


def test_n_steps():
    assert n_steps(1.0, 0.6, 0.04) == 10 and n_steps(1.0, 1.0, 0.04) == 0 and n_steps(0.3, 1.0, 0.1) == 7


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(base_channels=8, channel_mults=(1, 2), step_size=0.1)
    cfg.update(kw)
    return MedShift(DOMAINS, DOMAINS[:2], "real_normal", 16, **cfg).eval()


class _Counter:
    def __init__(self, net):
        self.images = 0
        net.register_forward_pre_hook(lambda mod, args, kwargs: self._count(args), with_kwargs=True)

    def _count(self, args):
        self.images += args[0].shape[0]


def test_tau_one_is_identity_and_tau_is_honoured():
    m = _model()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert torch.equal(m.translate(x, "syn_low", "real_normal", 1.0), x)
    outs = {tau: m.translate(x, "syn_low", "real_normal", tau) for tau in (0.9, 0.6, 0.3)}
    d = {tau: (o - x).abs().mean().item() for tau, o in outs.items()}
    assert d[0.9] < d[0.6] < d[0.3]  # less of the path re-generated -> closer to the source
    with pytest.raises(ValueError, match="tau"):
        m.translate(x, "syn_low", "real_normal", 1.5)


def test_guidance_limits_equal_conditional_and_unconditional_predictions():
    m = _model()
    x, t = torch.randn(2, 1, 16, 16), 0.4
    tt = torch.full((2,), t)
    cond = m(x, tt, torch.full((2,), 3), use_ema=True)
    null = m(x, tt, torch.full((2,), m.null_label), use_ema=True)
    torch.testing.assert_close(m.guided_velocity(x, t, 3, 1.0), cond)
    torch.testing.assert_close(m.guided_velocity(x, t, 3, 0.0), null)
    torch.testing.assert_close(m.guided_velocity(x, t, 3, 2.5), null + 2.5 * (cond - null), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("solver, guidance", [("euler", 2.0), ("heun", 2.0), ("euler", 1.0)])
def test_nfe_is_the_true_count_and_grows_with_steps_and_one_minus_tau(solver, guidance):
    m = _model(solver=solver, guidance=guidance)
    counter = _Counter(m.ema.shadow)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    for tau in (0.6, 0.3):
        counter.images = 0
        m.translate(x, "syn_low", "real_normal", tau)
        assert counter.images == m.nfe(tau) * len(x)
    assert m.nfe(0.3) > m.nfe(0.6) > m.nfe(0.9) > m.nfe(1.0) == 0
    assert _model(solver=solver, guidance=guidance, step_size=0.05).nfe(0.6) > m.nfe(0.6)
    unguided_encoding = _model(solver=solver, guidance=guidance, encode_guidance=1.0)
    counter = _Counter(unguided_encoding.ema.shadow)
    unguided_encoding.translate(x, "syn_low", "real_normal", 0.6)
    assert counter.images == unguided_encoding.nfe(0.6) * len(x)
    assert unguided_encoding.nfe(0.6) == (m.nfe(0.6) * 3 // 4 if guidance == 2.0 else m.nfe(0.6))  # 1 + 2 branches


def test_guidance_in_the_encoding_leg_is_the_decoding_legs_unless_set():
    """The authors' code guides both legs alike; `encode_guidance` (an ablation) guides the encoding leg apart."""
    from methods.components.solvers import integrate

    m = _model(guidance=2.0, step_size=0.25)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    s, r = m.domain_index("syn_low"), m.domain_index("real_normal")

    def by_hand(w_enc, w_dec):
        z = integrate(lambda y, t: m.guided_velocity(y, t, s, w_enc), x, 1.0, 0.5, 0.25, "euler")
        return integrate(lambda y, t: m.guided_velocity(y, t, r, w_dec), z, 0.5, 1.0, 0.25, "euler").clamp(-1, 1)

    torch.testing.assert_close(m.translate(x, "syn_low", "real_normal", 0.5), by_hand(2.0, 2.0))
    m.hparams.encode_guidance = 1.0
    torch.testing.assert_close(m.translate(x, "syn_low", "real_normal", 0.5), by_hand(1.0, 2.0))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_translation_with_exact_flows_between_gaussian_domains_matches_the_closed_form(solver):
    """Oracle velocity of the CondOT path for per-class Gaussian data N(mu_c, sd_c^2) (per pixel):
    v(x, t, c) = mu_c + (s s' / s^2)(x - t mu_c), s_t^2 = a_t^2 + t^2 sd_c^2, a_t = 1 - (1 - sigma_min) t.
    The flow keeps each pixel's standard score, so encode-then-decode is affine and known in closed form:
    x_tau = tau mu_S + s_tau^S (x - mu_S) / s_1^S,  x_hat = mu_R + s_1^R (x_tau - tau mu_R) / s_tau^R.
    Hence a gap mu_S - mu_R between domain means survives as the fraction tau sd_R / s_tau^R (-> 1 as tau -> 1):
    partial inversion restyles what the noise at tau hides, and keeps what it does not."""
    sigma_min = 1e-4
    stats = {0: (0.4, 0.3), 1: (-0.2, 0.5)}  # label: (mean, sd)
    m = _model(solver=solver, guidance=1.0, step_size=0.002 if solver == "euler" else 0.02, sigma_min=sigma_min)
    m.domains = ("a", "b")

    def s2(t, sd):
        return (1 - (1 - sigma_min) * t) ** 2 + (t * sd) ** 2

    def oracle(x, t, labels, use_ema=False):
        mu = torch.tensor([stats[int(c)][0] for c in labels]).view(-1, 1, 1, 1)
        sd = torch.tensor([stats[int(c)][1] for c in labels]).view(-1, 1, 1, 1)
        tt = t.view(-1, 1, 1, 1)
        a = 1 - (1 - sigma_min) * tt
        return mu + (-(1 - sigma_min) * a + tt * sd**2) / s2(tt, sd) * (x - tt * mu)

    m.forward = oracle
    x = 0.4 + 0.3 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    (mu_s, sd_s), (mu_r, sd_r) = stats[0], stats[1]
    for tau in (0.8, 0.6, 0.3, 0.0):
        x_tau = tau * mu_s + math.sqrt(s2(tau, sd_s) / s2(1, sd_s)) * (x - mu_s)
        expected = mu_r + math.sqrt(s2(1, sd_r) / s2(tau, sd_r)) * (x_tau - tau * mu_r)
        got = m.translate(x, "a", "b", tau)
        torch.testing.assert_close(got, expected.clamp(-1, 1), atol=1e-2 if solver == "euler" else 1e-3, rtol=0)
        kept = (float(m.translate(torch.full((1, 1, 4, 4), mu_s), "a", "b", tau).mean()) - mu_r) / (mu_s - mu_r)
        assert kept == pytest.approx(tau * math.sqrt(s2(1, sd_r) / s2(tau, sd_r)), abs=5e-3)  # ~ tau sd / s_tau


@pytest.mark.parametrize("path, coupling", [("condot", "independent"), ("bridge", "ot")])
def test_encode_decode_same_label_reconstructs_on_trained_toy_model(path, coupling):
    """Two-domain toy data (bright / dark discs); after a short fit the ODE inversion is nearly lossless, on the
    paper's path and on our Schrodinger-bridge extension."""
    torch.manual_seed(0)
    m = MedShift(("a", "b"), ("a",), "b", 16, base_channels=8, channel_mults=(1, 2), step_size=0.02, solver="heun",
                 guidance=1.0, ema_decay=0.0, warmup_steps=1, max_steps=150, p_uncond=0.2, path=path,
                 coupling=coupling)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disc = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) < 25).float()
    opt = m.configure_optimizers()["optimizer"]
    for step in range(150):
        labels = torch.randint(0, 2, (16,))
        imgs = (disc * torch.where(labels == 0, 0.8, -0.2).view(-1, 1, 1) - 0.5 * (1 - disc)).unsqueeze(1)
        imgs = imgs + 0.02 * torch.randn_like(imgs)
        loss = m.training_step({"image": imgs, "domain": labels}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_train_batch_end(None, None, step)
    m.eval()
    x = (disc * 0.8 - 0.5 * (1 - disc)).expand(2, 1, 16, 16)
    rec = m.translate(x, "a", "a", 0.5)
    assert (rec - x).pow(2).mean().sqrt() < 0.05
    moved = m.translate(x, "a", "b", 0.3)
    assert moved[:, :, 6:10, 6:10].mean() < x[:, :, 6:10, 6:10].mean() - 0.3  # the disc darkens towards domain b


def test_the_round_trip_approaches_the_identity_as_the_steps_shrink(micro):
    """Encoding real images to tau under their own label and decoding under the same label (`translate(x, d, d,
    tau)`) inverts the ODE up to the solver's error: on a seeded untrained network (an arbitrary smooth velocity
    field) the reconstruction error shrinks with the step size at Euler's first order and faster with Heun's."""
    from benchmark.scoring.metrics import psnr, ssim, to_unit

    x = micro.images("real_normal", "val")[0][:2]
    torch.manual_seed(0)
    m = MedShift(micro.domains, DOMAINS[:2], "real_normal", micro.size, base_channels=8, channel_mults=(1, 2)).eval()
    steps = (0.5, 0.2, 0.1, 0.05)
    err = {}
    for solver in ("euler", "heun"):
        for h in steps:
            m.hparams.update(step_size=h, solver=solver)
            err[solver, h] = float((m.translate(x, "real_normal", "real_normal", 0.3) - x).abs().mean())
        assert all(err[solver, a] > err[solver, b] for a, b in zip(steps, steps[1:], strict=False))
    assert 1.4 < err["euler", 0.1] / err["euler", 0.05] < 2.6  # first order: half the step, half the error
    assert all(err["heun", h] < err["euler", h] for h in steps)
    m.hparams.update(step_size=0.05, solver="heun")
    y = m.translate(x, "real_normal", "real_normal", 0.3)
    assert float(ssim(to_unit(y), to_unit(x)).mean()) > 0.999 and float(psnr(to_unit(y), to_unit(x)).mean()) > 55


# ------------------------------------------------------------------------------- latent space
def _fit_latent(tiny, tmp_path, **kw):
    import lightning as L

    from datasets.datamodule import TranslationDataModule

    cfg = dict(base_channels=8, channel_mults=(1, 2), step_size=0.25, batch_size=4, max_steps=2, warmup_steps=1,
               space="latent", ae_channels=(8, 16), ae_latent_channels=2, ae_steps=3)
    cfg.update(kw)
    m = MedShift(tiny.domains, DOMAINS[:2], "real_normal", tiny.size, **cfg)
    from methods import FitData

    m.prepare_fit(FitData(train_images=lambda: tiny.load(tiny.rows(tiny.domains, "train")), cache_dir=tmp_path,
                          identity=dict(dataset=tiny.name, split=tiny.split_hash)))
    dm = TranslationDataModule(tiny, tiny.domains, batch_size=4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(m, datamodule=dm)
    return m.eval(), trainer


def test_latent_mode_trains_caches_and_reuses_the_autoencoder(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("XRAYBENCH_CACHE", str(tmp_path / "env"))  # the runner's cache_dir (FitData) wins
    m, trainer = _fit_latent(tiny, tmp_path)
    cached = list((tmp_path / "autoencoders").iterdir())
    assert not (tmp_path / "env").exists()
    assert len(cached) == 1 and (cached[0] / "config.json").is_file()
    assert bool(m.first_stage_ready) and m.first_stage.scale.item() != 1.0  # 1/std of the training latents
    assert m.net.config.in_channels == 2 and m.net.config.sample_size == tiny.size // 2
    x, _ = tiny.images("syn_low", "test")
    y = m.translate(x[:2], "syn_low", "real_normal", 0.6)
    assert y.shape == (2, 1, tiny.size, tiny.size) and torch.isfinite(y).all()
    assert torch.equal(m.translate(x[:2], "syn_low", "real_normal", 1.0), x[:2])
    # a second run (another seed) reuses the cached autoencoder instead of training one
    import methods.components.autoencoder as ae_mod

    monkeypatch.setattr(ae_mod, "train_autoencoder", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    m2, _ = _fit_latent(tiny, tmp_path)
    torch.testing.assert_close(m2.first_stage.scale, m.first_stage.scale)
    # checkpoint round trip restores the autoencoder too
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = MedShift.load_from_checkpoint(ckpt, weights_only=True).eval()
    torch.testing.assert_close(restored.translate(x[:2], "syn_low", "real_normal", 0.6), y)


def test_latent_mode_with_a_users_pretrained_rgb_autoencoder(tmp_path):
    from methods.components.autoencoder import make_autoencoder

    ae = make_autoencoder(image_channels=3, latent_channels=4, channels=(8, 16))
    ae.register_to_config(scaling_factor=0.18215)  # the SD VAE's constant
    ae.save_pretrained(tmp_path / "vae")
    m = MedShift(DOMAINS, DOMAINS[:2], "real_normal", 16, base_channels=8, channel_mults=(1, 2),
                 space="latent", autoencoder=str(tmp_path / "vae")).eval()
    assert m.first_stage.scale.item() == pytest.approx(0.18215) and m.first_stage.channels == 3
    assert bool(m.first_stage_ready)
    y = m.translate(torch.rand(2, 1, 16, 16) * 2 - 1, "syn_low", "real_normal", 0.5)
    assert y.shape == (2, 1, 16, 16)
    with pytest.raises(FileNotFoundError, match="config.json"):
        MedShift(DOMAINS, DOMAINS[:2], "real_normal", 16, space="latent", autoencoder=str(tmp_path / "missing"))


def test_train_on_task_makes_one_fit_per_task_on_its_domains(micro):
    """`--set train_on=task` (issue 31's ablation: what one model for every pair costs): the fit sees the task's
    domains only, so two tasks with other domains are two fits; by default one fit serves both."""
    from dataclasses import asdict

    from benchmark.protocol.config import fit_key, plan, resolve_config
    from benchmark.run.fit import training_domains

    one = plan(["medshift"], [0], ["sim2real", "dose"], micro.domains, preset="micro")
    assert len(one) == 1 and one[0].tasks == ("sim2real", "dose")
    two = plan(["medshift"], [0], ["sim2real", "dose"], micro.domains, preset="micro",
               overrides=(("train_on", "task"),))
    assert [s.tasks for s in two] == [("sim2real",), ("dose",)]
    keys = {fit_key(asdict(s), resolve_config(s), micro.domains) for s in one + two}
    assert len(keys) == 3
    m = MedShift(micro.domains, ("syn_low", "syn_high"), "real_normal", micro.size, base_channels=8,
                 channel_mults=(1, 2), train_on="task")
    assert training_domains(two[0], m, micro)[1] == ("syn_low", "syn_high", "real_normal")
    assert MedShift.training_domains(micro.domains, ("syn_low",), "real_normal") == micro.domains
