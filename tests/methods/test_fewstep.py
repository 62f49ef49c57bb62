"""Few-step MedShift (`methods.medshift_fewstep`) through the runner on `micro`: the student finds its teacher's
finished fit (same seed and data), its records carry the teacher's run and training FLOPs beside its own and its
evaluations per image; without a teacher fit it is refused in one line naming the command that makes one; the
teacher's weights stay out of the student's checkpoint."""
import pytest
import torch
from runs import micro_ctx, records_of_test_split

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec
from benchmark.run.stages import run_one


def test_the_student_distils_its_teachers_fit(micro, tmp_path):
    root = str(micro.root.parent.parent)
    ctx = micro_ctx(tmp_path / "r")
    student = RunSpec("medshift-fewstep", preset="micro", data_root=root, max_steps=6)
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
