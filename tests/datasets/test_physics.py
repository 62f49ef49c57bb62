"""Physics of the real and synthetic styles: dose, scatter, hardening, heel."""
from dataclasses import replace

import numpy as np
import pytest

from datasets.phantom import MATERIAL_ID, MATERIALS, SubjectParams, build_head
from datasets.physics import DOMAIN_STYLES, heel_profile, line_integral_mono, realize, transmission_poly
from datasets.projector import VIEWS, project
from datasets.skull_sim import label_mask

PIXEL_MM = 340 / 64


@pytest.fixture(scope="module")
def lengths():
    return project(build_head(SubjectParams.mean()), VIEWS["pa"], 64, supersample=2)


def _noise_var(lengths, style, seeds=range(4)):
    """Variance of the log image around its noise-free mean (same detector), inside the object."""
    style = replace(style, electronic_sigma=0.0)  # the quantum part alone
    clean = replace(style, quanta=1e9)
    _, q0 = realize(lengths, clean, np.random.default_rng(0), PIXEL_MM, return_log=True)
    obj = label_mask(lengths) == 1  # soft tissue: enough quanta that -ln(n) is in its linear regime
    v = [np.var((realize(lengths, style, np.random.default_rng(s), PIXEL_MM, return_log=True)[1] - q0)[obj])
         for s in seeds]
    return float(np.mean(v))


def test_noise_falls_with_dose_as_inverse_quanta(lengths):
    low, normal, high = (DOMAIN_STYLES[d] for d in ("real_low", "real_normal", "real_high"))
    v_low, v_normal = _noise_var(lengths, low), _noise_var(lengths, normal)
    high_same_beam = replace(high, beam=low.beam, unsharp=0.0)
    v_high = _noise_var(lengths, high_same_beam)
    # Poisson: variance of -ln(n) ~ 1/n, so variance ratio ~ quanta ratio
    assert v_low / v_normal == pytest.approx(normal.quanta / low.quanta, rel=0.3)
    assert v_normal / v_high == pytest.approx(high.quanta / normal.quanta, rel=0.35)
    assert v_low > v_normal > v_high


def _contrast(img, mask):
    bone, soft = img[mask == 2].mean(), img[mask == 1].mean()
    return (bone - soft) / (bone + soft)


def test_real_has_lower_bone_soft_contrast_than_synthetic(lengths):
    mask = label_mask(lengths)
    rng = np.random.default_rng(0)
    syn = realize(lengths, replace(DOMAIN_STYLES["syn_high"], gaussian_sigma=0.0), rng, PIXEL_MM)
    real = realize(lengths, replace(DOMAIN_STYLES["real_normal"], quanta=1e9, electronic_sigma=0), rng, PIXEL_MM)
    assert _contrast(real, mask) < 0.8 * _contrast(syn, mask)


def test_scatter_lowers_contrast_and_attenuation_range(lengths):
    mask = label_mask(lengths)
    base = replace(DOMAIN_STYLES["real_normal"], quanta=1e9, electronic_sigma=0.0, gain_fpn=0.0)
    _, q_no = realize(lengths, replace(base, spr=0.0), np.random.default_rng(0), PIXEL_MM, return_log=True)
    _, q_sc = realize(lengths, replace(base, spr=0.5), np.random.default_rng(0), PIXEL_MM, return_log=True)
    obj = mask > 0
    assert q_sc[obj].max() < q_no[obj].max() - 0.1  # scatter fills in the densest regions
    assert (q_sc[mask == 2].mean() - q_sc[mask == 1].mean()) < (q_no[mask == 2].mean() - q_no[mask == 1].mean())


def test_polychromatic_beam_hardening_is_sublinear():
    thick = np.zeros((len(MATERIALS), 1, 3))
    thick[MATERIAL_ID["bone"], 0] = [5.0, 10.0, 20.0]
    p = -np.log(transmission_poly(thick, "w75_al2p5_cu0p1"))[0]
    assert p[1] < 2 * p[0] and p[2] < 2 * p[1]  # hardened: each doubling adds less
    p_mono = line_integral_mono(thick, 60.0)[0]
    np.testing.assert_allclose(p_mono[1], 2 * p_mono[0], rtol=1e-12)  # monoenergetic is linear


def test_heel_profile_monotone_and_synthetic_has_none():
    h = heel_profile(64, 0.15)
    assert np.all(np.diff(h) > 0) and h[0] == pytest.approx(0.85)
    assert DOMAIN_STYLES["syn_low"].heel == 0 and DOMAIN_STYLES["syn_low"].spr == 0


def test_synthetic_noise_level_depends_on_dose(lengths):
    low = realize(lengths, DOMAIN_STYLES["syn_low"], np.random.default_rng(1), PIXEL_MM)
    high = realize(lengths, DOMAIN_STYLES["syn_high"], np.random.default_rng(1), PIXEL_MM)
    clean = realize(lengths, replace(DOMAIN_STYLES["syn_high"], gaussian_sigma=0), np.random.default_rng(1), PIXEL_MM)
    inner = (clean > 0.05) & (clean < 0.95)  # away from clipping
    assert np.std((low - clean)[inner]) == pytest.approx(0.03, rel=0.15)
    assert np.std((high - clean)[inner]) == pytest.approx(0.01, rel=0.15)
