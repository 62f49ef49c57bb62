"""Golden test of the summary tables from committed fixture records (see tests/data/make_fixture.py)."""
import os
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from benchmark.collect import formatted, load_records, summary, write_tables

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def table():
    return summary(load_records(DATA / "records"))


def test_summary_matches_golden_file(table, tmp_path):
    written = write_tables(table, tmp_path)
    got = pd.read_csv(written[0])
    golden = DATA / "expected_summary.csv"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(written[0].read_text())
    pd.testing.assert_frame_equal(got, pd.read_csv(golden), check_exact=False, rtol=1e-9)
    assert {p.suffix for p in written} == {".csv", ".md", ".tex"}
    assert "medshift | tau=0.6" in (tmp_path / "headline.md").read_text()


def test_mean_and_interval_by_hand(table):
    row = table[(table["method"] == "medshift") & (table["knob_value"] == 0.6)].iloc[0]
    per_seed = [(0.55 + 0.57) / 2, (0.53 + 0.55) / 2]  # sources averaged within each seed first
    assert row["ssim_src"] == pytest.approx(sum(per_seed) / 2)
    half = stats.t.ppf(0.975, 1) * pd.Series(per_seed).std() / 2**0.5
    assert row["ssim_src_ci"] == pytest.approx(half) and row["n_seeds"] == 2


def test_ranks_follow_the_paper_convention(table):
    t = table.set_index(["method", "knob_value"])
    assert (t["realism_by"] == "fid").all()
    assert t.loc[("cyclegan", ""), "realism_rank"] == 1 and t.loc[("identity", ""), "realism_rank"] == 4
    assert t.loc[("identity", ""), "structure_rank"] == 1
    assert t.loc[("medshift", 0.6), "avg_rank"] == pytest.approx((3 + 3) / 2)


def test_markdown_has_arrows_bold_best_and_single_points(table):
    md = formatted(table)
    assert "FID ↓" in md.columns and "SSIM (src) ↑" in md.columns
    fid = dict(zip(md["method"] + md["knob"], md["FID ↓"]))
    assert fid["cyclegan–"].startswith("**152.0") and not fid["identity–"].startswith("**")
    assert set(md[md["method"] == "cyclegan"]["knob"]) == {"–"}  # no knob: one point


def test_variants_are_separate_rows_and_keep_their_grid(tmp_path):
    """Records of a `--set` variant (field `setting`) become their own rows: in the variants table, not the headline."""
    import json

    from benchmark.collect import headline
    from benchmark.records import record_sha

    lines = (DATA / "records" / "fixture.jsonl").read_text().splitlines()
    variant = []
    for line in lines:
        r = json.loads(line)
        if r["method"] == "medshift":
            r.pop("_sha")
            r["setting"], r["ssim_src"] = "guidance=3.0", r["ssim_src"] - 0.1
            r["_sha"] = record_sha(r)
            variant.append(json.dumps(r))
    (tmp_path / "all.jsonl").write_text("\n".join(lines + variant) + "\n")
    table = summary(load_records(tmp_path))
    base, var = (table[table["method"] == m] for m in ("medshift", "medshift (guidance=3.0)"))
    assert len(var) == len(base) > 0
    assert var["ssim_src"].to_numpy() == pytest.approx(base["ssim_src"].to_numpy() - 0.1)
    shown = set(headline(table)["method"])
    assert "medshift" in shown and "medshift (guidance=3.0)" not in shown
    var_table = headline(table, variants=True)
    assert list(dict.fromkeys(var_table["method"])) == ["medshift", "medshift (guidance=3.0)"]
    assert len(var_table) == 2 * len(headline(table).query("method == 'medshift'"))
    paths = write_tables(table, tmp_path / "tables")
    assert (tmp_path / "tables" / "variants.md") in paths and "guidance=3.0" in paths[-1].read_text()
    assert "guidance=3.0" not in (tmp_path / "tables" / "headline.md").read_text()


def test_each_table_names_the_metric_it_was_ranked_by(tmp_path):
    """An off-grid curve point without FID makes the summary rank by nps_dist; the headline (grid rows only, all
    with FID) still ranks by FID, and each footer says which."""
    import json

    from benchmark.collect import headline
    from benchmark.records import record_sha

    lines = (DATA / "records" / "fixture.jsonl").read_text().splitlines()
    extra = []
    for line in lines:
        r = json.loads(line)
        if r["method"] == "medshift" and r["knob_value"] == 0.6:
            r.pop("_sha")
            r["knob_value"], r["fid"] = 0.9, None
            r["_sha"] = record_sha(r)
            extra.append(json.dumps(r))
    (tmp_path / "all.jsonl").write_text("\n".join(lines + extra) + "\n")
    table = summary(load_records(tmp_path))
    assert set(table["realism_by"]) == {"nps_dist"} and set(headline(table)["realism_by"]) == {"fid"}
    write_tables(table, tmp_path / "tables")
    assert "realism rank by nps_dist" in (tmp_path / "tables" / "summary.md").read_text()
    assert "realism rank by fid" in (tmp_path / "tables" / "headline.md").read_text()
