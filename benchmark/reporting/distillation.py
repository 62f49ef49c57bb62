"""Distilled students against their teachers (`distillation.md`, issue 34): per task, student and tau, each metric of
the student beside its teacher's mean and 95 % interval at the same tau (subjects x seeds), whether the student lies
inside it, and whether the order over tau of each metric is the teacher's.

The pass criterion the README states: every point of the student inside the teacher's interval and the order over
tau preserved, on every metric shown. A pure function of the summary table (`tables.summary`); the students are the
registered methods that declare a `teacher` (`TranslationMethod.teacher`), their rows at the configured setting;
a student fitted at another budget (`run --budgets 3x`) stands beside its teacher at that budget, which it learnt
from.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.reporting.load import base_method, method_info
from benchmark.reporting.tables import STRUCTURE_GAP, format_cell, label_of, markdown, realism_metric

#: the metrics compared: the ranking's realism metric (where one is validated), noise texture, fidelity, structure
SHOWN = ("nps_flat", "ssim_gt", "ssim_src", STRUCTURE_GAP)
FOOTER = (
    "Each student (a method distilled from a finished fit of its teacher) at every tau it was scored at, beside its "
    "teacher at the same tau: the teacher's mean and 95% interval over test subjects and seeds; ✓ where the student's "
    "mean lies inside it. *order*: whether the student's values over tau are in the teacher's order (ties within "
    "1e-9 equal). *pass*: every metric inside at every tau and every order preserved (the README's criterion). "
    "nfe: network evaluations per image, student / teacher. *PSNR to teacher*: the student's mean per-image PSNR to "
    "its teacher's translations of the same test images (± over seeds; not part of the criterion). *s/image*: "
    "seconds per image on the machine that evaluated, student / teacher. *round trip SSIM*: translating the target's "
    "test images to their own domain and back at the knob value validation chose (where it chose this tau), "
    "student / teacher.")


def teacher_of(method: str) -> str | None:
    """The teacher of a student's row ("medshift-fewstep (jumps=1)" -> "medshift"); None for other rows. From the
    runs' config.json (`method_info`: building tables needs no torch); runs written before it recorded the teacher
    ask the method class."""
    info = method_info(method)
    if "teacher" in info:
        return info["teacher"]
    from methods import METHODS

    cls = METHODS.get(base_method(method))
    return getattr(cls, "teacher", None) if cls is not None else None


def _same_order(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the pairwise order of `a` is `b`'s (a pair tied in either counts as agreeing)."""
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if abs(da) > 1e-9 and abs(db) > 1e-9 and np.sign(da) != np.sign(db):
                return False
    return True


def distillation_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, student, tau) with the student's and the teacher's values and the verdicts; empty where no
    student has rows beside its teacher."""
    if table.empty:
        return pd.DataFrame()
    rows = []
    for (task, method), part in table.groupby(["task", "method"], sort=False):
        teacher = teacher_of(method)
        if teacher is None:
            continue
        budget = re.search(r"budget=[^,)]+", method)  # a student at a budget learns from its teacher at that budget
        teacher = f"{teacher} ({budget.group(0)})" if budget else teacher
        t_part = table[(table["task"] == task) & (table["method"] == teacher)]
        common = sorted(set(part["knob_value"].astype(float)) & set(t_part["knob_value"].astype(float)), reverse=True)
        if not common:
            continue
        realism = realism_metric(pd.concat([part, t_part]))
        shown = [m for m in ([realism] if realism else []) + list(SHOWN) if m in part and part[m].notna().any()]

        def at(frame, tau):
            return frame[np.isclose(frame["knob_value"].astype(float), tau)].iloc[0]

        orders = {m: _same_order(np.array([at(part, tau)[m] for tau in common], float),
                                 np.array([at(t_part, tau)[m] for tau in common], float)) for m in shown}
        block = []
        for tau in common:
            s, t = at(part, tau), at(t_part, tau)
            nfe = f"{s['nfe']:g} / {t['nfe']:g}" if pd.notna(s.get("nfe")) and pd.notna(t.get("nfe")) else "n/a"
            row = {"task": task, "student": method, "teacher": teacher, "tau": f"{tau:g}", "nfe": nfe}
            inside_all = True
            for m in shown:
                lo, hi = t.get(f"{m}_lo"), t.get(f"{m}_hi")
                inside = bool(np.isfinite(s[m]) and pd.notna(lo) and pd.notna(hi) and lo <= s[m] <= hi)
                inside_all &= inside
                row[label_of(m)] = (f"{format_cell(s[m], np.nan, m)} vs {format_cell(t[m], t.get(f'{m}_ci'), m)} "
                                    + ("✓" if inside else "✗"))
            if pd.notna(s.get("sec_per_image")) and pd.notna(t.get("sec_per_image")):
                row["s/image"] = (f"{format_cell(s['sec_per_image'], 0, 'sec_per_image')} / "
                                  f"{format_cell(t['sec_per_image'], 0, 'sec_per_image')}")
            if pd.notna(s.get("teacher_psnr")):
                row["PSNR to teacher (dB)"] = format_cell(s["teacher_psnr"], s.get("teacher_psnr_ci"), "psnr_gt")
            if pd.notna(s.get("roundtrip_ssim")) or pd.notna(t.get("roundtrip_ssim")):
                row["round trip SSIM"] = (f"{format_cell(s.get('roundtrip_ssim', np.nan), np.nan, 'ssim_gt')} / "
                                          f"{format_cell(t.get('roundtrip_ssim', np.nan), np.nan, 'ssim_gt')}")
            row["inside"] = inside_all
            block.append(row)
        ordered = all(orders.values())
        passed = ordered and all(row["inside"] for row in block)
        for row in block:
            row["order"] = "preserved" if ordered else "changed: " + ", ".join(label_of(m) for m, ok in orders.items()
                                                                              if not ok)
            row["pass"] = "yes" if passed else "no"
            row["inside"] = "all" if row["inside"] else "not all"
        rows += block
    out = pd.DataFrame(rows)
    verdicts = ["inside", "order", "pass"]  # last, whichever optional columns the first row lacked
    return out[[c for c in out.columns if c not in verdicts] + [c for c in verdicts if c in out.columns]]


def write_distillation(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """distillation.md where a student has rows beside its teacher (else none, and a stale one is removed)."""
    from benchmark.protocol.records import atomic_write

    path = Path(out_dir) / "distillation.md"
    part = distillation_table(table)
    if part.empty:
        path.unlink(missing_ok=True)
        return []
    atomic_write(path, markdown(part.fillna("–"), index=False) + "\n\n" + FOOTER + "\n")
    return [path]
