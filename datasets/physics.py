"""Imaging physics: from per-material path lengths to synthetic- or real-style X-ray images.

The two styles reproduce the gap MedShift names (attenuation, noise, soft tissue), following
../shared/reference/simulation.md §4.2-§4.3:

* synthetic (`syn_*`): monoenergetic 60 keV, soft tissue scaled down, no scatter/blur/heel,
  additive white Gaussian noise whose level depends on the dose;
* real (`real_*`): polychromatic SpekPy spectrum seen by an energy-integrating 0.6 mm CsI
  detector (beam hardening), heel effect, scatter (SPR times a broad exponential kernel),
  Poisson quanta at a dose-dependent count, detector blur *after* the noise draw, electronic
  noise, fixed-pattern gain non-uniformity, log transform, display window.

Design choices (documented here because nobody could confirm them for X-DigiSkull): doses are
expressed as detected quanta per *output* pixel so that every preset shows the noise texture of
the full-resolution data; blur and scatter widths are given in millimetres at the detector and
converted with the preset's pixel size (the detector blur is floored at 0.5 output pixel so a
64-px image keeps correlated noise); display polarity is radiographic (bone bright), with fixed
windows so that scatter and hardening change the displayed contrast as they would on a fixed LUT.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from .phantom import MATERIALS

TABLES = Path(__file__).resolve().parent / "tables"
SOFT_MATERIALS = ("soft", "brain", "fat", "water")
CSI_THICKNESS_MM = 0.6


@lru_cache(maxsize=None)
def attenuation_table() -> tuple[np.ndarray, np.ndarray]:
    """Linear attenuation of the phantom's materials.

    Returns:
        (energies_kev (E,), mu (len(MATERIALS), E) in 1/mm). Diploe is 45 % cortical bone + 55 %
        soft tissue by volume; enamel is cortical bone scaled to density 2.9 g/cm^3.
    """
    data = np.genfromtxt(TABLES / "attenuation.csv", delimiter=",", names=True)
    e = data["energy_kev"]
    mu = {name: data[name] for name in ("soft", "brain", "fat", "water", "bone", "air")}
    mu["diploe"] = 0.45 * mu["bone"] + 0.55 * mu["soft"]
    mu["enamel"] = mu["bone"] * 2.9 / 1.92
    mu["air"] = np.zeros_like(e)  # room air is also outside the object: do not count it
    return e, np.stack([mu[m] for m in MATERIALS])


@lru_cache(maxsize=None)
def detector_weights(beam: str) -> tuple[np.ndarray, np.ndarray]:
    """Energy weights w(E) = S(E) * E * eta(E) of an energy-integrating CsI detector, normalised.

    Args:
        beam: Column of `tables/spectra.csv` (e.g. "w75_al2p5_cu0p1").
    """
    spectra = np.genfromtxt(TABLES / "spectra.csv", delimiter=",", names=True)
    att = np.genfromtxt(TABLES / "attenuation.csv", delimiter=",", names=True)
    if beam not in spectra.dtype.names:
        raise KeyError(f"unknown beam {beam!r}; available: {', '.join(spectra.dtype.names[1:])}")
    e = spectra["energy_kev"]
    eta = 1.0 - np.exp(-att["csi"] * CSI_THICKNESS_MM)
    w = spectra[beam] * e * eta
    keep = w > 0
    return e[keep], w[keep] / w[keep].sum()


@dataclass(frozen=True)
class DomainStyle:
    """All parameters of one imaging domain (see module docstring for units)."""

    name: str
    kind: str  # "synthetic" | "real"
    dose_label: str
    kvp: float
    energy_kev: float = 60.0  # synthetic only
    soft_scale: float = 1.0  # synthetic only: soft-tissue attenuation factor
    gaussian_sigma: float = 0.0  # synthetic only: white noise, fraction of display range
    beam: str = "w75_al2p5_cu0p1"  # real only
    quanta: float = 0.0  # real: detected quanta per output pixel (object mean)
    spr: float = 0.0  # scatter-to-primary ratio (object mean)
    scatter_fwhm_mm: float = 40.0
    heel: float = 0.0  # relative intensity drop on the anode side
    det_sigma_mm: float = 0.0
    electronic_sigma: float = 0.0  # quanta, rms
    gain_fpn: float = 0.0  # rms pixel gain non-uniformity
    unsharp: float = 0.0  # unsharp-mask gain (vendor "exposure" processing)
    window: tuple[float, float] = (0.0, 8.0)  # displayed range of -ln(transmission)

    def to_dict(self) -> dict:
        return asdict(self)


DOMAIN_STYLES: dict[str, DomainStyle] = {
    s.name: s
    for s in (
        DomainStyle("syn_low", "synthetic", "low", kvp=60, soft_scale=0.6, gaussian_sigma=0.03, window=(0.0, 6.5)),
        DomainStyle("syn_high", "synthetic", "high", kvp=60, soft_scale=0.6, gaussian_sigma=0.01, window=(0.0, 6.5)),
        DomainStyle("real_low", "real", "low", kvp=75, quanta=60, spr=0.3, heel=0.15, det_sigma_mm=0.15,
                    electronic_sigma=2.0, gain_fpn=0.005, window=(0.0, 5.2)),
        DomainStyle("real_normal", "real", "normal", kvp=75, quanta=250, spr=0.3, heel=0.15, det_sigma_mm=0.15,
                    electronic_sigma=2.0, gain_fpn=0.005, window=(0.0, 5.2)),
        DomainStyle("real_high", "real", "high", kvp=80, beam="w80_al2p5_cu0p1", quanta=3000, spr=0.3,
                    heel=0.15, det_sigma_mm=0.15, electronic_sigma=2.0, gain_fpn=0.005, unsharp=0.4,
                    window=(0.0, 5.2)),
    )
}


def line_integral_mono(lengths: np.ndarray, energy_kev: float, soft_scale: float = 1.0) -> np.ndarray:
    """Monoenergetic -ln(T) = sum_m mu_m(E) L_m, soft materials scaled by `soft_scale`.

    Args:
        lengths: (M, H, W) path lengths in mm.
    """
    e, mu = attenuation_table()
    mu_e = np.array([np.interp(energy_kev, e, mu[m]) for m in range(len(MATERIALS))])
    for name in SOFT_MATERIALS:
        mu_e[MATERIALS.index(name)] *= soft_scale
    return np.tensordot(mu_e, lengths, axes=1)


def transmission_poly(lengths: np.ndarray, beam: str) -> np.ndarray:
    """Detector-weighted polychromatic transmission P = sum_E w(E) exp(-sum_m mu_m(E) L_m)."""
    e_w, w = detector_weights(beam)
    e, mu = attenuation_table()
    mu_w = np.stack([np.interp(e_w, e, mu[m]) for m in range(len(MATERIALS))])  # (M, E)
    p_e = np.einsum("me,mhw->ehw", mu_w, lengths)
    return np.einsum("e,ehw->hw", w, np.exp(-p_e))


def exponential_kernel_fft(shape: tuple[int, int], fwhm_px: float) -> np.ndarray:
    """FFT of a normalised 2-D exponential kernel exp(-r/lambda), FWHM = 2 lambda ln 2."""
    lam = max(fwhm_px, 1e-6) / (2 * np.log(2))
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    # 2-D Fourier transform of exp(-r/lam) (normalised to 1 at f=0): (1 + (2 pi lam f)^2)^(-3/2)
    return (1.0 + (2 * np.pi * lam) ** 2 * (fx**2 + fy**2)) ** -1.5


def scatter_field(primary: np.ndarray, obj: np.ndarray, spr: float, fwhm_px: float) -> np.ndarray:
    """Scatter = SPR * mean_obj(I) * (I * k) / mean_obj(I * k), convolved on an edge-padded image."""
    if spr <= 0:
        return np.zeros_like(primary)
    pad = int(min(3 * fwhm_px, 2 * primary.shape[0]))
    padded = np.pad(primary, pad, mode="edge")
    blurred = np.real(np.fft.ifft2(np.fft.fft2(padded) * exponential_kernel_fft(padded.shape, fwhm_px)))
    blurred = blurred[pad:-pad or None, pad:-pad or None]
    return spr * primary[obj].mean() * blurred / blurred[obj].mean()


def heel_profile(width: int, heel: float) -> np.ndarray:
    """Relative intensity along the anode-cathode (image x) axis: 1-heel at the anode, 1+heel/4 at the cathode."""
    x = np.linspace(0.0, 1.0, width)
    return (1.0 - heel) + (1.25 * heel) * x


def fixed_pattern(shape: tuple[int, int], rms: float, seed: int) -> np.ndarray:
    """Detector gain map 1 + g_pix + g_row + g_col (rows/cols at 40 % of the pixel rms); fixed per detector."""
    if rms <= 0:
        return np.ones(shape)
    rng = np.random.default_rng([seed, 7919])
    g = rng.normal(0, rms, shape) + rng.normal(0, 0.4 * rms, (shape[0], 1)) + rng.normal(0, 0.4 * rms, (1, shape[1]))
    return 1.0 + g


def to_display(q: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((q - lo) / (hi - lo), 0.0, 1.0)


def poisson_coupled(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Poisson counts by inversion of one uniform per pixel: exact Poisson marginals, and two images drawn with the
    same generator state differ only where their means differ (monotone coupling; `rng.poisson` instead draws a
    mean-dependent number of variates, so one changed pixel changes the noise of every later one)."""
    from scipy import stats

    return stats.poisson.ppf(rng.random(mean.shape), mean)


def realize(lengths: np.ndarray, style: DomainStyle, rng: np.random.Generator, pixel_mm: float,
            detector_seed: int = 0, return_log: bool = False, coupled_noise: bool = False):
    """Render one image of `style` from path-length maps.

    Args:
        lengths: (M, H, W) path lengths (mm) from `datasets.projector.project`.
        style: Domain parameters.
        rng: Noise generator (one per image, for reproducibility).
        pixel_mm: Output pixel size at the detector, mm.
        detector_seed: Seeds the fixed gain pattern (the same detector for every image).
        return_log: Also return the noisy log image -ln(T) before windowing.
        coupled_noise: Draw the quanta with `poisson_coupled` (skull-sim v3: two realisations of a scene's
            anatomy under the same noise seed differ by the anatomy alone).

    Returns:
        Display image (H, W) float64 in [0, 1] (bone bright), or (display, log_image).
    """
    obj = lengths.sum(axis=0) > 1.0
    if not obj.any():
        obj = np.ones_like(obj)
    if style.kind == "synthetic":
        q = line_integral_mono(lengths, style.energy_kev, style.soft_scale)
        img = to_display(q, style.window) + rng.normal(0.0, style.gaussian_sigma, q.shape)
        img = np.clip(img, 0.0, 1.0)
        return (img, q) if return_log else img
    # 1. polychromatic primary through the object, 2. heel effect
    primary = transmission_poly(lengths, style.beam) * heel_profile(lengths.shape[2], style.heel)[None, :]
    # 3. scatter with a broad exponential kernel
    scatter = scatter_field(primary, obj, style.spr, style.scatter_fwhm_mm / pixel_mm)
    # 4. Poisson quanta: scale so the object mean is `quanta`
    q_open = style.quanta / (primary + scatter)[obj].mean()
    mean = q_open * (primary + scatter)
    counts = (poisson_coupled(rng, mean) if coupled_noise else rng.poisson(mean)).astype(np.float64)
    # 5. detector blur after the draw (correlated noise), 6. electronic noise and fixed gain pattern
    sigma_px = max(style.det_sigma_mm / pixel_mm, 0.5) if style.det_sigma_mm > 0 else 0.0
    if sigma_px > 0:
        counts = ndimage.gaussian_filter(counts, sigma_px, mode="nearest")
    counts = counts + rng.normal(0.0, style.electronic_sigma, counts.shape)
    counts = counts * fixed_pattern(counts.shape, style.gain_fpn, detector_seed)
    # 7. log transform against the open field (no flat-field correction of the heel)
    q = -np.log(np.maximum(counts, 0.5) / q_open)
    # 8. vendor processing for the "exposure" mode, 9. display window
    if style.unsharp > 0:
        q = q + style.unsharp * (q - ndimage.gaussian_filter(q, 3.0 / pixel_mm, mode="nearest"))
    img = to_display(q, style.window)
    return (img, q) if return_log else img
