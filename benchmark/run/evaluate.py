"""Evaluation: translating a split with the selected weights (`translate`), scoring it against its references and
assembling the records (`Evaluator`), and the test points of a run (`test_points`)."""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import benchmark.protocol.validation as V
from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec, setting
from benchmark.protocol.provenance import git_sha
from benchmark.protocol.records import PROTOCOL_VERSION, RECORD_KEYS, read_records, seal, write_records
from benchmark.protocol.samples import sample_scenes, save_samples
from benchmark.run.context import PreparedRun

#: Images per sampler call when translating (measured: a 64-px U-Net on 2 cores runs 2x faster per image than at 64).
#: The same on every device: a stochastic sampler seeds its noise per call, so the batch decides each image's noise.
EVAL_BATCH = 16


@torch.no_grad()
def in_batches(fn, method, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor | None, float]:
    """`fn(batch on the method's device)` over `x` in batches of `EVAL_BATCH`, gathered on the CPU (None where `fn`
    returns None); returns it and the seconds per image."""
    device = method.device
    t0 = time.perf_counter()
    out = []
    for i in range(0, len(x), batch_size):
        y = fn(x[i:i + batch_size].to(device))
        if y is None:
            return None, 0.0
        out.append(y.float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out), (time.perf_counter() - t0) / max(len(x), 1)


def translate(method, x: torch.Tensor, source: str, target: str, knob,
              batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, float]:
    """Translate in batches of `EVAL_BATCH`; returns the translations and the seconds per image."""
    return in_batches(lambda b: method.translate(b, source, target, knob), method, x, batch_size)


def _reference_images(dataset, target: str) -> torch.Tensor:
    try:
        return dataset.images(target, "ref")[0]
    except ValueError as exc:
        raise RunError(f"{dataset.name}: no {target} images in the 'ref' split, which realism is scored against; "
                       "the dataset needs more subjects (datasets/splits.py)") from exc


def point_key(rec: dict) -> tuple:
    return (rec.get("split", "test"), rec.get("step"), rec["task"], rec["source"], rec["knob_value"])


class Evaluator:
    """Scores points of one run: the learning curve (validation), the knob choice (validation) and the
    test evaluations; loads each image set and real reference once and writes every record as it is made."""

    def __init__(self, run: PreparedRun, records: list[dict]):
        from datasets import get_task

        spec, dataset = run.spec, run.dataset
        self.spec, self.method, self.dataset, self.ctx = spec, run.method, dataset, run.ctx
        self.records, self.path = records, run.records_path
        self.tasks = {t: get_task(t, dataset.domains) for t in spec.tasks}
        self.sets, self.references = {}, {}
        self.sha, self.setting = git_sha(), setting(spec)
        self.train: dict = {}
        #: {translation key without a source: round-trip scores} (`round_trip`)
        self.round_trips: dict = {}
        #: translations made elsewhere with the selected weights (`translate_sharded`), used once each
        self.translated: dict = {}
        #: {task: the sampling settings validation chose} (`choose_sampling`; empty: the configured ones)
        self.sampling_choice: dict[str, dict] = {}
        #: a distilled student's teacher, loaded at its first test point (`teacher_agreement`)
        self._teacher = None
        #: called after each validation point the choices score (a progress bar's advance)
        self.advance = lambda: None

    @contextmanager
    def sampling(self, overrides: dict):
        """The method with these sampling settings for the duration (its hparams restored after)."""
        hp = self.method.hparams
        saved = {k: hp[k] for k in overrides}
        hp.update(overrides)
        self.method.apply_sampling()
        try:
            yield
        finally:
            hp.update(saved)
            self.method.apply_sampling()

    def key(self, split: str, task_name: str, source: str, knob, overrides: dict | None = None) -> tuple:
        """The translation key of a point (`translate_sharded`): the sampling settings it is translated with last."""
        overrides = self.sampling_choice.get(task_name, {}) if overrides is None else overrides
        return (split, task_name, source, knob, tuple(overrides.items()))

    # ------------------------------------------------------------------ data
    def split_set(self, split: str, task_name: str, source: str):
        """(source images, aligned images, why none, subjects, scenes) of `source`'s scenes of `split` in the task,
        loaded once."""
        key = (split, task_name, source)
        if key not in self.sets:
            task = self.tasks[task_name]
            rows = V.task_rows(self.dataset, source, task.sources, split)
            if rows.empty:
                raise RunError(f"{self.dataset.name}: no {source} images in the {split!r} split")
            x_src = self.dataset.load(rows)
            self.sets[key] = (x_src, *self.dataset.counterparts(rows, task.target), list(rows["subject"]),
                              list(rows["scene"]))
        return self.sets[key]

    def _reference(self, target: str):
        if target not in self.references:
            d = self.dataset
            self.references[target] = self.ctx.scorer.reference(_reference_images(d, target), dict(
                dataset=d.name, config=d.config, split=d.split_hash, part="ref", domain=target))
        return self.references[target]

    # ------------------------------------------------------------------ records
    def _record(self, method, split: str, task_name: str, source: str, knob, step=None,
                overrides: dict | None = None, extra=None) -> dict:
        """The record of one point; `extra(x_src, x_hat)` adds fields computed from its translations."""
        x_src, x_gt, gt_reason, subjects, scenes = self.split_set(split, task_name, source)
        target = self.tasks[task_name].target
        key = self.key(split, task_name, source, knob, overrides)
        with self.sampling(dict(key[4])):
            done = self.translated.pop(key, None)
            x_hat, sec = done if done is not None else translate(method, x_src, source, target, knob)
            nfe = method.nfe(knob)
        if split == "test":
            save_samples(self.path.parent, task_name, scenes, sample_scenes(self.dataset, target), source, target,
                         knob, x_src, x_gt, x_hat)
        scorer = self.ctx.scorer if split == "test" else self.ctx.val_scorer
        scores = scorer.score(x_hat, x_src, x_gt, self._reference(target), gt_reason, subjects=subjects)
        spec = self.spec
        rec = {k: None for k in RECORD_KEYS}
        rec.update({k: v for k, v in scores.items() if k != "unavailable"})
        rec.update(method=spec.method, setting=self.setting, dataset=spec.dataset, preset=spec.preset,
                   task=task_name, seed=spec.seed, source=source, target=target, knob=method.knob_name,
                   knob_value=knob, nfe=nfe, sec_per_image=sec, n_params=method.n_params,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   unavailable=scores["unavailable"], run_id=spec.run_id, split_hash=self.dataset.split_hash,
                   git_sha=self.sha, protocol=PROTOCOL_VERSION, split=split, step=step,
                   sampling=dict(key[4]) or None)
        if extra is not None:
            more = extra(x_src, x_hat)
            rec["unavailable"] = {**(rec["unavailable"] or {}), **more.pop("unavailable", {})}
            rec.update(more)
        return rec

    def reload(self) -> None:
        """Take the records from disk (a multi-device fit's first rank wrote its learning curve there)."""
        self.records[:] = read_records(self.path)

    def add(self, rec: dict) -> dict:
        """Seal `rec`, append it and rewrite records.jsonl (every record is on disk as soon as it is made)."""
        rec = seal(rec)
        self.records.append(rec)
        write_records(self.path, self.records)
        return rec

    def curve_points(self) -> list[tuple]:
        """(task, source, knob) of the learning curve: every source of every task (so the whole validation split),
        at the method's default knob value (the first of its table grid), each translated once per checkpoint."""
        knob = self.method.knob_grid[0]
        return [(t, s, knob) for t, task in self.tasks.items() for s in task.sources]

    def curve_point(self, method, step: int) -> None:
        for task_name, source, knob in self.curve_points():
            if ("val", step, task_name, source, knob) not in {point_key(r) for r in self.records}:
                rec = self._record(method, "val", task_name, source, knob, step=step)
                self.add(dict(rec, flops=step * (self.train.get("flops_per_iteration") or 0) or None))

    def curve_records(self) -> list[dict]:
        return [r for r in self.records if r.get("split") == "val" and isinstance(r.get("step"), int)]

    def _knob_choice_points(self) -> list[tuple]:
        """(task, source, knob) of the knob choice: every table knob value on the whole validation set."""
        return [(t, s, k) for t, task in self.tasks.items() for s in task.sources for k in self.method.knob_grid]

    def plan(self, todo: list[tuple]) -> list[tuple]:
        """The translations an evaluation of the test points `todo` makes with the selected weights, as keys
        (`key`: split, task, source, knob, sampling settings): the knob choice's validation points not yet recorded,
        then `todo` (values beyond the grid's edge, `choose_knobs`, are translated here when validation asks for
        them), with the sampling settings validation chose (`choose_sampling` first)."""
        have = {point_key(r) for r in self.records}
        keys = [self.key("val", *p) for p in self._knob_choice_points()
                if ("val", "selected", *p) not in have and self._chosen_candidate_record(*p) is None]
        return keys + [self.key("test", t, s, k) for t, s, k in todo]

    def _chosen_candidate_record(self, task_name: str, source: str, knob) -> dict | None:
        """The sampling choice's validation record of this point, made with the same weights and settings as the
        knob choice's would be (so the knob choice copies it instead of translating again); None without one."""
        chosen = self.sampling_choice.get(task_name)
        if not chosen:
            return None
        label = V.sampling_label(chosen)
        return next((r for r in self.records if point_key(r) == ("val", label, task_name, source, knob)), None)

    def _sampling_points(self) -> list[tuple]:
        """(task, source, knob, candidate) of the sampling choice: every candidate at the default knob value (the
        first of the table grid, where the learning curve chose the checkpoint) on the whole validation split; a
        sampling setting the run sets (`--set`) is pinned (an ablation of it). At
        every table knob value MedShift's eight candidates cost about 1.8 times its training budget on `tiny`; at
        the default value, about 0.4 times."""
        if self.spec.preset in V.NO_SAMPLING_CHOICE:
            return []
        pinned = {k for k, _ in self.spec.overrides}  # `--set solver=heun`: that setting is the run's, not chosen
        candidates = V.sampling_candidates(dict(self.method.hparams), type(self.method).sampling_grid, pinned)
        knob = self.method.knob_grid[0]
        return [(t, s, knob, c) for t, task in self.tasks.items() for c in candidates for s in task.sources]

    def sampling_plan(self) -> list[tuple]:
        """The translations of the sampling choice not yet recorded, as keys (`key`)."""
        have = {point_key(r) for r in self.records}
        return [self.key("val", t, s, k, c) for t, s, k, c in self._sampling_points()
                if ("val", V.sampling_label(c), t, s, k) not in have]

    def choose_sampling(self) -> dict[str, dict]:
        """Score every sampling candidate (`validation.sampling_candidates`) at the default knob value on the whole
        validation split; {task: the chosen settings} (`validation.best_sampling`), kept in `sampling_choice` for the
        knob choice and the test records. Nothing without a `sampling_grid`."""
        have = {point_key(r): r for r in self.records}
        by_task: dict[str, tuple[list, dict]] = {}
        for t, s, k, c in self._sampling_points():
            label = V.sampling_label(c)
            rec = have.get(("val", label, t, s, k))
            if rec is None:
                rec = self.add(self._record(self.method, "val", t, s, k, step=label, overrides=c))
                self.advance()
            recs, labels = by_task.setdefault(t, ([], {}))
            recs.append(rec)
            labels[label] = c
        self.sampling_choice = {t: labels[V.best_sampling(recs)] for t, (recs, labels) in by_task.items()}
        return self.sampling_choice

    def choose_knobs(self, bar=None) -> dict:
        """Score every table knob value on the whole validation set; {task: the best value}. A best value at the edge
        of the grid extends it (`validation.beyond_edge`, within the method's `knob_bounds`) until the choice is
        interior or the bound is reached; the extended values are scored on validation like the grid's."""
        have: dict[tuple, dict] = {}
        for r in self.records:
            have.setdefault(point_key(r), r)

        def scored(task_name: str, source: str, knob) -> dict:
            done = have.get(("val", "selected", task_name, source, knob))
            if done is None:
                chosen = self._chosen_candidate_record(task_name, source, knob)
                done = self.add(dict(chosen, step="selected")) if chosen is not None else self.add(
                    self._record(self.method, "val", task_name, source, knob, step="selected"))
                self.advance()
            return done

        choice = {}
        for task_name, task in self.tasks.items():
            grid = list(self.method.knob_grid)
            recs = [scored(task_name, s, k) for s in task.sources for k in grid]
            best = V.best_knob(recs)
            for _ in range(V.MAX_EXTENSIONS):
                nxt = V.beyond_edge(grid, best, type(self.method).knob_bounds)
                if nxt is None or self.method.nfe(nxt) < 1:
                    break
                grid.append(nxt)
                recs += [scored(task_name, s, nxt) for s in task.sources]
                best = V.best_knob(recs)
            choice[task_name] = best
        return choice

    def val_record(self, task_name: str, source: str, knob) -> dict:
        """A validation record of the knob choice (not yet written)."""
        return self._record(self.method, "val", task_name, source, knob, step="selected")

    def test_record(self, task_name: str, source: str, knob, val_choice: bool) -> dict:
        """A test record (not yet written: the caller adds it, or merges it into a re-scored one)."""
        teacher = self.train.get("teacher")
        rec = self._record(self.method, "test", task_name, source, knob,
                           extra=(lambda x, y: self.teacher_agreement(task_name, source, knob, x, y)) if teacher
                           else None)
        resumed = [s["start_step"] for s in self.train.get("segments", []) if s["start_step"] > 0]
        info = self.train
        rec.update(train_sec=info.get("train_sec"), train_steps=info.get("train_steps"),
                   train_flops=info.get("train_flops"), images_seen=info.get("images_seen"),
                   selected_step=info.get("selected_step"), fit_from=info.get("fit_from"),
                   resumed_from_steps=resumed, val_choice=val_choice)
        if info.get("teacher"):  # a distilled student (`TranslationMethod.teacher`): what it was distilled from
            rec.update(teacher_run=info["teacher"]["run_id"], teacher_train_flops=info["teacher"]["train_flops"],
                       teacher_sampling_flops=info["teacher"].get("sampling_flops"))
        if val_choice:
            rec.update(self.round_trip(task_name, source, knob))
        return rec

    def teacher_agreement(self, task_name: str, source: str, knob, x_src: torch.Tensor, x_hat: torch.Tensor) -> dict:
        """{"teacher_psnr"}: for a distilled student, the mean per-image PSNR (dB) between its translations of a test
        point and its teacher's of the same images at the same knob value, the teacher with the sampling settings its
        validation chose (what the student was distilled from); None, with the reason under `unavailable`, where the
        teacher's run folder is gone or the teacher has no such knob value."""
        from benchmark.run.finished import load_translator
        from benchmark.scoring.metrics import psnr, to_unit

        info = self.train["teacher"]
        if self._teacher is None:
            folder = Path(info["folder"])
            if not (folder / "checkpoints" / "selected.ckpt").is_file():
                return dict(teacher_psnr=None, unavailable=dict(
                    teacher_psnr=f"the teacher's run {folder} is not there: re-run it to score this"))
            self._teacher, _ = load_translator(folder)
            self._teacher.hparams.update(info.get("sampling") or {})
            self._teacher.apply_sampling()
        try:
            x_teacher, _ = translate(self._teacher, x_src, source, self.tasks[task_name].target, knob)
        except ValueError as exc:
            return dict(teacher_psnr=None, unavailable=dict(teacher_psnr=str(exc)))
        return dict(teacher_psnr=float(psnr(to_unit(x_hat), to_unit(x_teacher)).mean()))

    def round_trip(self, task_name: str, source: str, knob) -> dict:
        """{"roundtrip_ssim", "roundtrip_psnr"}: the mean SSIM and PSNR between the target domain's test images and
        their round trip `translate(x, target, target, knob)` with the point's sampling settings, for a method whose
        class declares `round_trip` (empty for the others; None where the target has no test images); a method whose
        `reconstruct` returns one (latent MedShift) adds "ae_recon_ssim", "ae_recon_psnr": its first stage's
        reconstruction of the same images, the ceiling every latent translation sits under. Needs no
        pairs; made once per (task, knob, sampling settings), shared by the task's sources. On aligned data the
        target's test images are the aligned counterparts the points already loaded (the sources' scenes together:
        each test scene is translated once), so the test split is not read again."""
        if not getattr(self.method, "round_trip", False):
            return {}
        target = self.tasks[task_name].target
        key = self.key("test", task_name, "", knob)
        if key not in self.round_trips:
            parts = [self.split_set("test", task_name, s)[1] for s in self.tasks[task_name].sources]
            if all(p is not None for p in parts):
                x_real = torch.cat(parts)
            else:
                try:
                    x_real = self.dataset.images(target, "test")[0]
                except ValueError:
                    return dict(roundtrip_ssim=None, roundtrip_psnr=None)
            from benchmark.scoring.metrics import psnr, ssim, to_unit

            with self.sampling(dict(key[4])):
                x_rt, _ = translate(self.method, x_real, target, target, knob)
            a, b = to_unit(x_rt), to_unit(x_real)
            self.round_trips[key] = dict(roundtrip_ssim=float(ssim(a, b).mean()),
                                         roundtrip_psnr=float(psnr(a, b).mean()))
            x_ae, _ = in_batches(self.method.reconstruct, self.method, x_real)
            if x_ae is not None:  # a latent method's ceiling: its first stage alone (`TranslationMethod.reconstruct`)
                a = to_unit(x_ae)
                self.round_trips[key].update(ae_recon_ssim=float(ssim(a, b).mean()),
                                             ae_recon_psnr=float(psnr(a, b).mean()))
        return self.round_trips[key]


def test_points(spec: RunSpec, method, dataset) -> list[tuple[str, str, object]]:
    """(task, source, knob value) test points: the table grid, plus the dense curve with `--curve` and the values of
    `--knobs` (a knob value off the grid, e.g. one a distilled student was not trained on)."""
    from datasets import get_task

    grid = tuple(method.knob_grid)
    if spec.curve and method.knob_curve:
        grid = tuple(dict.fromkeys(grid + tuple(method.knob_curve)))
    if spec.knobs:
        grid = tuple(dict.fromkeys(grid + tuple(float(k) for k in spec.knobs)))
    points = []
    for t in spec.tasks:
        task = get_task(t, dataset.domains)
        points += [(t, src, k) for src in task.sources for k in grid]
    return points
