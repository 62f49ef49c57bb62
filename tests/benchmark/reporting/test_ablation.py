"""MedShift's ablation table and figure (`benchmark.reporting.ablation`) on records made here with known values: each
configuration at the knob value its validation chose, its difference to the default with the interval of that
difference (checked against the closed-form Welch interval), the round trip from the records, budget variants left
to compute.md."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.reporting.ablation import ablation_figure, ablation_table, write_ablation
from benchmark.reporting.tables import summary

SPREAD = (-0.004, 0.0, 0.004)  # per-seed offsets: a small, known training noise
HEUN_SPREAD = (-0.006, 0.001, 0.002)  # a variant's own: seed by seed it differs from the default's


def records(configs: dict) -> pd.DataFrame:
    """{(method, setting): (ssim_gt at the chosen tau, chosen tau, seeds, round trip SSIM)} -> test records of the
    seeds x 2 sources; MedShift rows at tau 0.3 and 0.6 (the other value 0.05 worse), the others without a knob."""
    rows = []
    for (method, setting), (gt, chosen_tau, n_seeds, trip, *spread) in configs.items():
        spread = spread[0] if spread else SPREAD
        name = f"{method} ({setting})" if setting else method
        knobs = [(t, t == chosen_tau) for t in (0.3, 0.6)] if method == "medshift" else [("", True)]
        for seed, d in enumerate(spread[:n_seeds]):
            if isinstance(chosen_tau, tuple):  # each seed's own validation choice
                knobs = [(t, t == chosen_tau[seed]) for t in (0.3, 0.6)]
            for source in ("syn_low", "syn_high"):
                for knob, chosen in knobs:
                    worse = 0.0 if chosen else 0.05
                    rows.append(dict(dataset="skull-sim", preset="tiny", task="sim2real", method=name,
                                     setting=setting, seed=seed, source=source, split="test", step=None,
                                     knob="tau" if method == "medshift" else "", knob_value=knob, val_choice=chosen,
                                     nps_dist=0.2 + d + worse, ssim_gt=gt + d - worse, ssim_src=0.7 + d, protocol=3,
                                     nfe=28 if method == "medshift" else 1, n_params=1.04e6,
                                     roundtrip_ssim=trip + d if chosen and trip else None,
                                     roundtrip_psnr=30.0 + 100 * d if chosen and trip else None,
                                     ae_recon_ssim=0.93 + d if chosen and setting == "space=latent" else None))
    return pd.DataFrame(rows)


CONFIGS = {("identity", ""): (0.63, None, 3, None),
           ("cyclegan", ""): (0.90, None, 3, None),
           ("medshift", ""): (0.80, 0.3, 3, 0.95),
           ("medshift", "solver=heun"): (0.85, 0.3, 3, 0.99, HEUN_SPREAD),
           ("medshift", "train_on=task"): (0.80, 0.3, 3, 0.95),
           ("medshift", "space=latent"): (0.70, 0.6, 1, 0.90),
           ("medshift", "budget=6.3e+13"): (0.95, 0.3, 3, 0.97)}


@pytest.fixture(scope="module")
def both():
    recs = records(CONFIGS)
    return summary(recs), recs


def test_each_configuration_at_its_choice_with_its_difference_to_the_default(both):
    table, recs = both
    t = ablation_table(table, recs).set_index("configuration")
    assert list(t.index) == ["default", "solver=heun", "space=latent", "train_on=task", "cyclegan"]  # no budget
    assert t.loc["space=latent", "knob (per seed)"] == "tau=0.6" and t.loc["space=latent", "seeds"] == "1"
    assert t.loc["default", "knob (per seed)"] == "tau=0.3/0.3/0.3" and t.loc["cyclegan", "knob (per seed)"] == "–"
    # a variant's difference: Student t over the seed-by-seed differences (no test-set replicates here)
    d = 0.05 + np.subtract(HEUN_SPREAD, SPREAD)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    col = [c for c in t.columns if c.startswith("Δ SSIM (gt)")][0]
    assert t.loc["solver=heun", col] == f"**{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]**"
    assert t.loc["train_on=task", col] == "+0.000 [+0.000, +0.000]"  # the same values seed by seed: not apart
    # the latent variant has seed 0 only: against the default's seed 0, not bold (no training noise covered)
    assert t.loc["space=latent", col] == "-0.100"  # seed 0 of each at its own choice; one seed, no replicates
    # CycleGAN against the default: Welch over two sets of 3 seeds with the same spread
    var = np.var(SPREAD, ddof=1) / 3
    dof = (2 * var) ** 2 / (2 * var ** 2 / 2)
    welch = stats.t.ppf(0.975, dof) * np.sqrt(2 * var)
    assert t.loc["cyclegan", col] == f"**+0.100 [{0.1 - welch:+.3f}, {0.1 + welch:+.3f}]**"
    assert t.loc["default", col] == "–"
    assert t.loc["solver=heun", "round trip SSIM"].startswith("0.989 ± ")  # 0.99 + its spread
    assert t.loc["cyclegan", "round trip SSIM"] == "–"
    assert t.loc["space=latent", "round trip SSIM"] == "0.896"  # one seed (offset -0.004): no interval
    assert t.loc["space=latent", "autoencoder SSIM"] == "0.926"  # the first stage's ceiling, latent only
    assert t.loc["default", "autoencoder SSIM"] == "–" and t.loc["cyclegan", "autoencoder SSIM"] == "–"


def test_each_seed_is_read_at_its_own_choice():
    """Where the seeds' validation chose different tau, each seed counts at its own choice (as the headline reads
    MedShift), not every seed at the value most of them chose: here the default's seeds chose 0.6, 0.3, 0.6, and
    its SSIM (gt) is 0.80 + offset at each seed's choice (0.05 lower at the other value)."""
    recs = records({**CONFIGS, ("medshift", ""): (0.80, (0.6, 0.3, 0.6), 3, 0.95)})
    t = ablation_table(summary(recs), recs).set_index("configuration")
    assert t.loc["default", "knob (per seed)"] == "tau=0.6/0.3/0.6"
    assert t.loc["default", "SSIM (gt) ↑"].startswith("0.800 ± ")  # at the most-chosen 0.6 for all: 0.783
    assert ablation_table(summary(recs)).set_index("configuration").loc["default", "SSIM (gt) ↑"].startswith("0.783")


def test_the_table_and_figure_exist_only_with_variants(both, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    table, recs = both
    path = write_ablation(table, recs, tmp_path)[0]
    assert "| solver=heun" in path.read_text() and "Round trip" in path.read_text()
    assert ablation_figure(table, "sim2real") is not None and ablation_figure(table, "sim2real", recs) is not None
    plain = summary(records({k: v for k, v in CONFIGS.items() if k[1] in ("", "budget=6.3e+13")}))
    assert write_ablation(plain, None, tmp_path) == [] and not path.exists()  # a stale one is removed
    assert ablation_figure(plain, "sim2real") is None


def test_the_figure_draws_every_configuration_apart_and_within_ssims_range():
    """Each configuration has its own colour and marker, none the default's or CycleGAN's (two variants once shared
    orange), and a two-seed interval reaching past SSIM 1 (t with 1 df) is cut at the frame, not drawn up to 1.1."""
    import matplotlib

    matplotlib.use("Agg")
    wide = (-0.08, 0.08)
    configs = {**CONFIGS, ("medshift", "solver=heun"): (0.93, 0.3, 2, 0.99, wide),
               **{("medshift", f"guidance={g}"): (0.8, 0.3, 1, 0.95) for g in (3.0, 4.0, 5.0, 6.0)}}
    recs = records(configs)
    fig = ablation_figure(summary(recs), "sim2real", recs)
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    looks = [(matplotlib.colors.to_hex(h.lines[0].get_color()), h.lines[0].get_marker()) for h in handles]
    assert len(labels) == 1 + 1 + 7  # the default, CycleGAN, seven variants
    assert len({c for c, _ in looks}) == len(looks), looks  # a colour each: two orange variants read as one
    assert ("#d62728", "o") not in looks[2:] and ("#1f77b4", "^") not in looks[2:]  # the default's, CycleGAN's
    tops = [max(y for seg in h.lines[2][-1].get_segments() for _, y in seg) for h in handles]
    assert max(tops) > 1.0 and ax.get_ylim()[1] == 1.0  # Heun's interval passes 1; the frame stops there


def test_a_methods_variants_each_get_a_colour_of_their_own():
    """The trade-off figure of variants keeps the method's marker, so a variant is told apart by colour alone: the
    first ten variants differ from each other and from the method (with five colours the sixth, MedShift's
    `encode_guidance`, was drawn exactly like the first, Heun)."""
    from benchmark.reporting.styles import method_style

    looks = [method_style("medshift")] + [method_style(f"medshift (setting={i})", i) for i in range(10)]
    assert len({(s["color"], s["marker"]) for s in looks}) == len(looks)


def test_validation_picks_among_configurations_on_the_seeds_they_share():
    """val SSIM (gt) is each seed's best knob value's mean validation SSIM (gt) over the sources (what its knob
    choice maximised), and validation's pick compares the configurations on the seeds all of them have: the
    default's seed 2 (1.0) would make it the best over all its seeds, but on the shared seed 0 space=latent wins."""
    recs = records(CONFIGS)
    val = []
    for method, per_seed in (("medshift", {0: 0.80, 1: 0.80, 2: 1.0}), ("medshift (space=latent)", {0: 0.85})):
        for seed, top in per_seed.items():
            for source, d in (("syn_low", -0.01), ("syn_high", 0.01)):
                for knob, v in ((0.3, top), (0.6, top - 0.1)):
                    val.append(dict(recs.iloc[0].to_dict(), method=method, setting=method[10:-1], seed=seed,
                                    source=source, split="val", step="selected", knob_value=knob, ssim_gt=v + d,
                                    val_choice=None))
    recs = pd.concat([recs, pd.DataFrame(val)], ignore_index=True)
    t = ablation_table(summary(recs), recs).set_index("configuration")
    assert t.loc["space=latent (validation's pick)", "val SSIM (gt)"] == "0.850"  # one seed: no interval
    half = stats.t.ppf(0.975, 2) * np.std([0.8, 0.8, 1.0], ddof=1) / np.sqrt(3)
    assert t.loc["default", "val SSIM (gt)"] == f"0.867 ± {half:.3f}"
    assert t.loc["cyclegan", "val SSIM (gt)"] == "–"
