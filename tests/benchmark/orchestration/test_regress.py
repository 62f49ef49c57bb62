"""The CI regression: its comparison and invariants, and a drill that breaks a method on purpose."""
import json

import pytest

import benchmark.orchestration.regress as R


def _summary(changes: dict | None = None):
    base = {
        "identity": {"syn_low": dict(ssim_src=1.0, nps_dist=0.6, nps_flat=0.2, frd=None, nfe=0, n_params=0,
                                     val_choice=True)},
        "medshift": {f"syn_low tau={t}": dict(ssim_src=s, nps_dist=0.2, nps_flat=0.1, frd=None, nfe=n,
                                              n_params=1000, val_choice=t == 0.6)
                     for t, s, n in ((0.6, 0.7, 16), (0.45, 0.6, 24), (0.3, 0.5, 28))},
    }
    for (method, point, metric), value in (changes or {}).items():
        base[method][point][metric] = value
    return base


INFO = {"identity": dict(group="reference", knob=None), "medshift": dict(group="unpaired", knob="tau")}


def test_comparison_names_what_moved_and_by_how_much():
    ref = dict(results=_summary(), tolerances={"medshift": {"ssim_src": 0.01}})
    assert R.compare(_summary(), ref) == []
    now = _summary({("medshift", "syn_low tau=0.6", "ssim_src"): 0.72})  # moved by 0.02 > 0.01
    rows = R.compare(now, ref)
    assert [(r["method"], r["point"], r["metric"]) for r in rows] == [("medshift", "syn_low tau=0.6", "ssim_src")]
    assert rows[0]["diff"] == pytest.approx(0.02) and "| medshift | syn_low tau=0.6 | ssim_src |" in R.format_rows(rows)
    assert R.compare(_summary({("medshift", "syn_low tau=0.6", "nfe"): 17}), ref)[0]["metric"] == "nfe"  # exact
    del now["medshift"]["syn_low tau=0.3"]
    assert any(r["metric"] == "(point)" for r in R.compare(now, ref))


def test_invariants_catch_a_method_that_stopped_translating():
    assert R.invariants(_summary(), INFO) == []
    broken = R.invariants(_summary({("medshift", "syn_low tau=0.6", "nps_dist"): 0.61}), INFO)  # not below 0.6
    assert broken == ["medshift syn_low tau=0.6: nps_dist 0.61 does not beat no translation's 0.6"]
    flat = R.invariants(_summary({("medshift", "syn_low tau=0.45", "ssim_src"): 0.75}), INFO)
    assert flat and "not monotone" in flat[0]
    assert "!= 1" in R.invariants(_summary({("identity", "syn_low", "ssim_src"): 0.99}), INFO)[0]
    # a tie within the slack is not a reversal (seed noise at micro); beyond it, it is
    tie = _summary({("medshift", "syn_low tau=0.45", "ssim_src"): 0.7 + 0.5 * R.MONOTONE_SLACK})
    assert R.invariants(tie, INFO) == []
    reversed_ = _summary({("medshift", "syn_low tau=0.45", "ssim_src"): 0.7 + 2 * R.MONOTONE_SLACK})
    assert "not monotone" in R.invariants(reversed_, INFO)[0]


def test_tolerances_from_repeated_runs():
    a, b = _summary(), _summary({("medshift", "syn_low tau=0.3", "nps_dist"): 0.21})
    tol = R.derive_tolerances([a, b])
    assert tol["medshift"]["nps_dist"] == pytest.approx(R.TOL_FACTOR * 0.01)
    assert tol["medshift"]["ssim_src"] == R.TOL_FLOOR["ssim_src"]  # no spread: the floor


def test_a_reference_from_another_machine_widens_the_tolerances(tmp_path, monkeypatch):
    """`--update --also OTHER.json`: seed 0 run on another CPU counts as a repeat; without --update it is refused."""
    from benchmark.errors import RunError

    other = _summary({("medshift", "syn_low tau=0.6", "ssim_src"): 0.74})  # another CPU moved it by 0.04
    (tmp_path / "other.json").write_text(json.dumps(dict(results=other)))
    monkeypatch.setattr(R, "run_parallel", lambda *a, **k: ([], {"medshift": 1.0}))
    monkeypatch.setattr(R, "summarize", lambda records: _summary())
    monkeypatch.setattr(R, "method_infos", lambda now: INFO)
    ref = tmp_path / "regress.json"
    assert R.main(update=True, reference_path=ref, also=(tmp_path / "other.json",)) == 0
    written = json.loads(ref.read_text())
    assert written["tolerances"]["medshift"]["ssim_src"] == pytest.approx(R.TOL_FACTOR * 0.04)
    assert "1 run(s) of seed 0 on other machines" in written["tolerance_derivation"]
    with pytest.raises(RunError, match="--also"):
        R.main(reference_path=ref, also=(tmp_path / "other.json",))


def test_the_committed_reference_covers_every_regressed_method():
    from methods import BUILTIN_METHODS

    covered = set(R.regressed(BUILTIN_METHODS))
    assert "medshift" in covered and "medshift-fewstep" not in covered  # students stay out until they work
    ref = json.loads(R.REFERENCE_PATH.read_text())
    assert set(ref["results"]) == covered
    assert ref["preset"] == "micro" and set(ref["tolerances"]) >= covered - {"identity"}


def test_drill_regress_fails_when_sdedit_skips_its_noising(monkeypatch, tmp_path, capsys, data_root):
    """Break SDEdit on purpose (denoise without noising first: it returns its input) and the regression fails, on
    the reference comparison and on the invariant that a learned method beats no translation."""
    from methods.components.diffusion import DiffusionCore

    monkeypatch.setattr(DiffusionCore, "denoise_from", lambda self, eps, x, strength, generator=None: x.clone())
    assert R.main(methods=["identity", "sdedit"], results_dir=tmp_path, frd=False, jobs=1) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "| sdedit |" in out and "does not beat no translation" in out
