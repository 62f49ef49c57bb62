"""Few-step MedShift (`methods.medshift_fewstep`) through the runner on `micro`: the student finds its teacher's
finished fit (same seed and data), its records carry the teacher's run and training FLOPs beside its own and its
evaluations per image; without a teacher fit it is refused in one line naming the command that makes one; the
teacher's weights stay out of the student's checkpoint; trained at the preset's budget it is closer to its teacher's
ODE solution than the teacher itself at the same number of network evaluations."""
import io
import json

import numpy as np
import pytest
import torch
from runs import micro_ctx, records_of_test_split

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec
from benchmark.run.progress import PlainProgress
from benchmark.run.stages import run_one
from benchmark.scoring.metrics import psnr
from methods import get_method


def test_the_student_distils_its_teachers_fit(micro, tmp_path):
    root = str(micro.root.parent.parent)
    ctx = micro_ctx(tmp_path / "r")
    student = RunSpec("medshift-fewstep", preset="micro", data_root=root)  # the preset's budget: equal compute
    with pytest.raises(RunError, match="no finished medshift run of seed 0.*python -m benchmark run --method medshift"):
        run_one(student, ctx)
    teacher = RunSpec("medshift", preset="micro", data_root=root)  # the headline fit: no --set, the preset's budget
    t_recs = records_of_test_split(run_one(teacher, ctx))
    recs = records_of_test_split(run_one(student, ctx))
    assert recs and {r["teacher_run"] for r in recs} == {teacher.run_id}
    t_flops = {r["train_flops"] for r in t_recs}
    assert {r["teacher_train_flops"] for r in recs} == t_flops and None not in t_flops
    assert {r["nfe"] for r in recs} == {4}  # two jumps per leg, against the teacher's
    assert min(r["nfe"] for r in t_recs) > 4
    assert all(r["roundtrip_ssim"] is not None for r in recs if r["val_choice"])
    ckpt = torch.load(student.folder(ctx.results_dir) / "checkpoints" / "selected.ckpt", weights_only=True)
    assert not any(k.startswith("_teacher") for k in ckpt["state_dict"])
    assert "teacher_guidance" in ckpt["state_dict"]
    _its_psnr_to_the_teacher_is_the_images_psnr(student, teacher, recs, ctx)
    _closer_to_the_ode_solution_than_the_teacher_at_equal_evaluations(student, teacher, ctx)
    _the_one_step_baseline_regresses_the_same_teachers_translations(teacher, t_recs, ctx, root)


def _the_one_step_baseline_regresses_the_same_teachers_translations(teacher, t_recs, ctx, root):
    """`medshift-onestep`: the teacher's translations at the grid's tau (translated once: the budget's probe and the
    fit share the cached coupling), one evaluation per image, the translation cost in the records; no free tau."""
    from benchmark.run.finished import load_translator

    spec = RunSpec("medshift-onestep", preset="micro", data_root=root, max_steps=20)
    lines = io.StringIO()
    ctx.progress = PlainProgress(stream=lines)  # the coupling takes 20 min on `tiny`: it says how far it got
    recs = records_of_test_split(run_one(spec, ctx))
    assert any(line.startswith("medshift-onestep seed 0: preparing: ") and "(100%)" in line
               for line in lines.getvalue().splitlines()), lines.getvalue()
    assert recs and {r["teacher_run"] for r in recs} == {teacher.run_id} and {r["nfe"] for r in recs} == {1}
    assert {r["knob_value"] for r in recs} <= set(get_method("medshift-onestep").knob_grid)
    sampling = {r["teacher_sampling_flops"] for r in recs}
    assert len(sampling) == 1
    assert sampling.pop() == _teacher_flops_in_closed_form(teacher, t_recs, ctx, spec)
    assert len(list((ctx.results_dir / "cache").glob("onestep-coupling-*.pt"))) == 1
    onestep, _ = load_translator(spec.folder(ctx.results_dir))
    images, _ = ctx.datasets[next(iter(ctx.datasets))].images("syn_low", "val")
    with pytest.raises(ValueError, match="no free tau"):
        onestep.translate(images, "syn_low", "real_normal", 0.5)
    with pytest.raises(KeyError, match="was trained for"):
        onestep.translate(images, "real_normal", "syn_low", 0.3)


def _its_psnr_to_the_teacher_is_the_images_psnr(student_spec, teacher_spec, recs, ctx):
    """`teacher_psnr` of a test record: skimage's PSNR between the student's and the teacher's translations (the
    teacher under its validation-chosen sampling) of the point's test images, averaged over the images."""
    from skimage.metrics import peak_signal_noise_ratio

    import benchmark.protocol.validation as V
    from benchmark.run.finished import load_translator
    from datasets import get_task

    rec = next(r for r in recs if r["source"] == "syn_low" and r["val_choice"])
    teacher, _ = load_translator(teacher_spec.folder(ctx.results_dir))
    student, _ = load_translator(student_spec.folder(ctx.results_dir))
    info = json.loads((student_spec.folder(ctx.results_dir) / "train.json").read_text())["teacher"]
    teacher.hparams.update(info.get("sampling") or {})
    dataset = ctx.datasets[next(iter(ctx.datasets))]
    x = dataset.load(V.task_rows(dataset, "syn_low", get_task("sim2real", dataset.domains).sources, "test"))
    a = student.translate(x, "syn_low", rec["target"], rec["knob_value"]).numpy()
    b = teacher.translate(x, "syn_low", rec["target"], rec["knob_value"]).numpy()
    expected = np.mean([peak_signal_noise_ratio(u, v, data_range=2.0) for u, v in zip(a, b, strict=True)])
    assert rec["teacher_psnr"] == pytest.approx(expected, abs=0.05)
    assert rec["unavailable"].get("teacher_psnr") is None


def _teacher_flops_in_closed_form(teacher_spec, t_recs, ctx, spec):
    """What translating the coupling costs the teacher, from its parts: images x the teacher's network evaluations per
    image at each tau under its validation-chosen sampling (`MedShift.nfe`) x the FLOPs of one evaluation on one
    image (torch's counter on the bare network), summed over the sources and the grid."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark.run.finished import load_translator

    teacher, _ = load_translator(teacher_spec.folder(ctx.results_dir))
    onestep = get_method("medshift-onestep")
    chosen = next(r["sampling"] for r in t_recs if r["val_choice"] and r["task"] == spec.tasks[0]) or {}
    teacher.hparams.update({k: v for k, v in chosen.items() if k != "guidance"})
    from datasets import get_task

    dataset = ctx.datasets[next(iter(ctx.datasets))]
    n_images = len(dataset.rows(get_task(spec.tasks[0], dataset.domains).sources, "train"))
    x = dataset.images("syn_low", "val")[0][:1]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        teacher(x, torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long), use_ema=True)
    nfe = sum(teacher.nfe(tau, guidance=chosen.get("guidance")) for tau in onestep.knob_grid)
    return n_images * nfe * counter.get_total_flops()


def _psnr(a, b):
    """Mean per-image PSNR (dB) of images in [-1, 1]."""
    return float(psnr(a, b, data_range=2.0).mean())


def _closer_to_the_ode_solution_than_the_teacher_at_equal_evaluations(student_spec, teacher_spec, ctx):
    """The student's 2 jumps per leg (4 evaluations per image) against the teacher's 1 Euler step per leg with its
    guidance (2 evaluations a step: 4 as well), both measured against the teacher's ODE solved finely (Heun, h 0.01),
    on the validation images at two tau of the grid, under the guidance the teacher's validation chose. Measured:
    18.5 against 16.9 dB at tau 0.3, 23.8 against 22.6 dB at tau 0.6 (the teacher's 2 Euler steps per leg, 8
    evaluations, still do better: 22.9 and 28.9 dB; so does the student trained 1500 steps with 4 jumps per leg
    at tau 0.6 only)."""
    from benchmark.run.finished import load_translator

    teacher, _ = load_translator(teacher_spec.folder(ctx.results_dir))
    student, _ = load_translator(student_spec.folder(ctx.results_dir))
    assert student.nfe(0.3) == 4
    images, _ = ctx.datasets[next(iter(ctx.datasets))].images("syn_low", "val")  # in [-1, 1]
    hp, w = teacher.hparams, student.guidance()
    for tau in (0.3, 0.6):
        hp.solver, hp.step_size = "heun", 0.01
        exact = teacher.translate(images, "syn_low", "real_normal", tau, guidance=w)
        hp.solver, hp.step_size = "euler", 1 - tau  # one step per leg
        euler = teacher.translate(images, "syn_low", "real_normal", tau, guidance=w)
        few = student.translate(images, "syn_low", "real_normal", tau)
        assert _psnr(few, exact) > _psnr(euler, exact) + 0.5, (tau, _psnr(few, exact), _psnr(euler, exact))


def test_torch_flop_counter_still_fails_on_the_students_forward_mode_step():
    """Why the budget counts a stand-in of the student's step (`MedShiftFewStep._flops_stand_in`): torch's FLOP
    counter crashes the process on the flow-map loss's Jacobian-vector product through the U-Net (a plain conv net's
    JVP it counts). Run in a child process; when a torch release fixes it, this fails: count the real step then."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import torch
from torch.utils.flop_counter import FlopCounterMode
from methods.components.flowmap import FlowMapNet, flowmap_loss
net = FlowMapNet(16, 1, 8, (1, 2), n_labels=3)
x, s, t = torch.randn(2, 1, 16, 16), torch.tensor([0.5, 0.2]), torch.tensor([0.9, 0.1])
with FlopCounterMode(display=False) as counter:
    zero = lambda x_, t_, c_, w_: torch.zeros_like(x_)
    flowmap_loss(net, zero, x, s, t, torch.tensor([0, 1]), torch.ones(2)).backward()
print("counted", counter.get_total_flops())
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    if done.returncode >= 0:  # not killed by a signal: it ran (or failed for another reason, shown here)
        pytest.fail(f"torch's FLOP counter now runs the student's step (exit {done.returncode}): {done.stdout[-200:]}"
                    f"{done.stderr[-500:]}")


def test_the_budgets_stand_in_costs_what_the_students_step_costs_on_a_net_the_counter_can_run():
    """The budget counts `_flops_stand_in` because torch's counter cannot run the real step through the U-Net (test
    above). On a plain conv student, which it can run, the real step (JVP, then the backward pass of the primal, the
    target being detached) and the stand-in (the teacher, forward, backward and two more forward passes) count the
    same FLOPs: `torch.func.jvp` runs three forward passes' worth of convolutions, not two (measured: the real step
    counted 5.5 forward passes, a stand-in with one extra forward 4.5)."""
    from types import SimpleNamespace

    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from methods.components.flowmap import flowmap_loss
    from methods.medshift_fewstep import MedShiftFewStep

    class ConvStudent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 1, 3, padding=1)

        def forward(self, x, s, t, labels, w):
            scale = (1 + s + t + w + labels.float()).view(-1, 1, 1, 1)
            return self.b(torch.nn.functional.silu(self.a(x * scale)))

    student = ConvStudent()
    teacher = ConvStudent()

    def velocity(x, s, labels, w):
        return teacher(x, s, s, labels, w)

    x, s, t = torch.randn(4, 1, 16, 16), torch.rand(4), torch.rand(4)
    labels, w = torch.tensor([0, 1, 2, 0]), torch.ones(4)
    with FlopCounterMode(display=False) as real:
        flowmap_loss(student, velocity, x, s, t, labels, w).backward()
    with FlopCounterMode(display=False) as stand_in:
        MedShiftFewStep._flops_stand_in(SimpleNamespace(student=student, _teacher_velocity=velocity),
                                        x, s, t, labels, w).backward()
    assert real.get_total_flops() > 0
    assert stand_in.get_total_flops() == real.get_total_flops()
