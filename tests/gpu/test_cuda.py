"""Checks that need a CUDA device (`pytest -m gpu tests/gpu`; `tools/gpu_check.sh` runs them with the GPU timings).

They are marked `gpu`, which `make test` deselects, and skip where no CUDA device is present. What they pin: a fit
trains and is scored on the GPU at bf16 with the same iteration count as on the CPU (Lightning's step counting does
not change with the accelerator), and a translation on the GPU equals the CPU's to float tolerance.
"""
import json

import pytest
import torch
from runs import micro_ctx, micro_spec, records_of_test_split

from benchmark.run.stages import run_one

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("method", ["medshift", "cyclegan"])
def test_a_fit_on_the_gpu_in_bf16_trains_its_budget_and_scores(method, micro, tmp_path):
    spec = micro_spec(micro, method, accelerator="gpu", precision="bf16-mixed", max_steps=40)
    records = run_one(spec, micro_ctx(tmp_path))
    test = records_of_test_split(records)
    assert test and all(0.0 < r["ssim_src"] <= 1.0 for r in test)
    train = json.loads(next(tmp_path.rglob("train.json")).read_text())
    assert train["train_steps"] == 40  # iterations, whatever the optimizers per iteration


def test_translation_on_the_gpu_equals_the_cpus(micro):
    from methods import get_method

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    method = get_method("medshift")(domains=micro.domains, sources=("syn_low", "syn_high"), target="real_normal",
                                    image_size=micro.size, base_channels=8, channel_mults=[1, 2]).eval()
    x = micro.images("syn_high", "test")[0][:4]
    torch.manual_seed(1)
    on_cpu = method.translate(x, "syn_high", "real_normal", 0.6)
    torch.manual_seed(1)
    on_gpu = method.cuda().translate(x.cuda(), "syn_high", "real_normal", 0.6).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-3), (on_cpu - on_gpu).abs().max()
