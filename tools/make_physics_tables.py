"""Regenerate datasets/tables/{attenuation,spectra}.csv (developer tool, not needed at run time).

Needs `pip install xraydb spekpy` (both on PyPI, offline data). The committed CSVs are what the
generator reads, so neither package is a run-time dependency.

Attenuation: mass attenuation mu/rho (cm^2/g, total incl. coherent) from xraydb.material_mu
for the ICRU-44 compositions of ../shared/reference/simulation.md section 2.4, times density,
giving linear mu in 1/mm at 1-keV steps. Spectra: SpekPy W-anode (12 deg) photon fluence per keV
bin at 1 m for the real-domain beams.
"""
from pathlib import Path

import numpy as np
import xraydb

OUT = Path(__file__).resolve().parents[1] / "datasets" / "tables"
ENERGIES_KEV = np.arange(10, 121, 1.0)

# mass fractions (NIST / ICRU-44) and densities g/cm^3
MATERIALS = {
    "soft": ({"H": .102, "C": .143, "N": .034, "O": .708, "Na": .002, "P": .003, "S": .003, "Cl": .002, "K": .003}, 1.06),  # noqa: E501
    "brain": ({"H": .107, "C": .145, "N": .022, "O": .712, "Na": .002, "P": .004, "S": .002, "Cl": .003, "K": .003}, 1.04),  # noqa: E501
    "fat": ({"H": .114, "C": .598, "N": .007, "O": .278, "Na": .001, "S": .001, "Cl": .001}, 0.95),
    "water": ({"H": .111894, "O": .888106}, 1.00),
    "bone": ({"H": .034, "C": .155, "N": .042, "O": .435, "Na": .001, "Mg": .002, "P": .103, "S": .003, "Ca": .225}, 1.92),  # noqa: E501
    "air": ({"C": .000124, "N": .755268, "O": .231781, "Ar": .012827}, 0.001205),
    "aluminium": ({"Al": 1.0}, 2.699),
    "copper": ({"Cu": 1.0}, 8.96),
    "csi": ({"Cs": 0.5115, "I": 0.4885}, 4.51),
}


def mass_mu(fractions: dict[str, float]) -> np.ndarray:
    ev = ENERGIES_KEV * 1000.0
    total = sum(fractions.values())
    return sum(w / total * xraydb.mu_elam(el, ev) for el, w in fractions.items())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cols = {"energy_kev": ENERGIES_KEV}
    for name, (fr, rho) in MATERIALS.items():
        cols[name] = mass_mu(fr) * rho / 10.0  # 1/cm -> 1/mm
    header = ",".join(cols)
    rows = np.stack(list(cols.values()), axis=1)
    np.savetxt(OUT / "attenuation.csv", rows, delimiter=",", header=header, comments="",
               fmt=["%.0f"] + ["%.6e"] * (len(cols) - 1))

    import spekpy
    beams = {"w75_al2p5_cu0p1": (75, 2.5, 0.1), "w80_al2p5_cu0p1": (80, 2.5, 0.1), "w70_al2p5": (70, 2.5, 0.0)}
    spec_cols = {"energy_kev": ENERGIES_KEV}
    for name, (kvp, al, cu) in beams.items():
        s = spekpy.Spek(kvp=kvp, th=12, dk=1.0)
        s.multi_filter((("Al", al), ("Cu", cu)))
        k, phi = s.get_spectrum()
        spec_cols[name] = np.interp(ENERGIES_KEV, k, phi, left=0.0, right=0.0)
    rows = np.stack(list(spec_cols.values()), axis=1)
    np.savetxt(OUT / "spectra.csv", rows, delimiter=",", header=",".join(spec_cols), comments="",
               fmt=["%.0f"] + ["%.6e"] * (len(spec_cols) - 1))


if __name__ == "__main__":
    main()
