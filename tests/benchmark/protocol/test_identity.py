"""Run identity across versions: archived run folders keep resolving, new options do not rename runs."""
import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from benchmark.protocol.config import HASHED_FIELDS, RunSpec, identity_fields, plan

ROOT = Path(__file__).resolve().parents[3]
# the v3 archive (protocol 3, the headline) and the protocol-2 archive on v2
ARCHIVED = sorted(ROOT.glob("results/records/*/*/*/config.json")) + \
    sorted(ROOT.glob("results/v2/records/*/*/*/config.json"))


def _spec(stored: dict, data_identity: dict | None = None) -> RunSpec:
    """The spec of an archived run as it is written today: `skull-sim` of generator version 2 is `skull-sim-v2`."""
    d = dict(stored, tasks=tuple(stored["tasks"]), overrides=tuple(tuple(kv) for kv in stored["overrides"]))
    if d["dataset"] == "skull-sim" and (data_identity or {}).get("generator_version") == "2":
        d["dataset"] = "skull-sim-v2"
    if "speedups" in d:
        d["speedups"] = tuple(d["speedups"])
    return RunSpec(**d)


@pytest.mark.parametrize("cfg_path", ARCHIVED, ids=[str(p.parent.relative_to(ROOT / "results")) for p in ARCHIVED])
def test_every_archived_run_folder_still_resolves_to_its_spec(cfg_path):
    cfg = json.loads(cfg_path.read_text())
    spec = _spec(cfg["spec"], cfg.get("data_identity"))
    assert spec.run_id == cfg["run_id"] and cfg_path.parent.name == f"seed{spec.seed}-{spec.run_id}"


def test_archive_is_there_to_check():
    assert len(ARCHIVED) >= 40


def test_a_field_at_its_default_does_not_enter_the_run_id():
    """Every spec field added after the first run ids (any field outside HASHED_FIELDS, including ones added in
    future) is left out of the hash at its default: the run id equals the hash of the first fields alone."""
    spec = RunSpec("medshift", dataset="skull-sim-v2", tasks=("sim2real", "dose"))
    later = [f.name for f in fields(RunSpec) if f.name not in HASHED_FIELDS]
    assert later  # devices, strategy, speedups, accumulate, num_nodes
    assert not set(later) & set(identity_fields(asdict(spec)))
    first_only = {k: v for k, v in asdict(spec).items() if k in HASHED_FIELDS and k not in ("data_root", "curve")}
    first_only["data"], first_only["dataset"] = spec.data_identity, "skull-sim"  # v2 hashes as skull-sim did
    assert spec.run_id == hashlib.sha256(json.dumps(first_only, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert spec.run_id == "3fad0715d2"  # MedShift seed 0's archived fit, made before any later field existed
    assert RunSpec("medshift", dataset="skull-sim-v2", tasks=("sim2real", "dose"), devices=2).run_id != spec.run_id
    assert RunSpec("medshift", tasks=("sim2real", "dose")).run_id != spec.run_id  # v3 is other data


def test_a_task_named_twice_is_one_fit():
    domains = ("syn_low", "syn_high", "real_low", "real_normal", "real_high")
    specs = plan(["cyclegan"], [0], ["sim2real", "sim2real"], domains)
    assert [s.tasks for s in specs] == [("sim2real",)]
    assert [s.tasks for s in plan(["medshift"], [0], ["sim2real", "dose", "sim2real"], domains)] == \
        [("sim2real", "dose")]
