"""Throughput, measured side by side in one process: the scorer vs each method's `translate`, and (`--train`) each
learned method's training iterations at two Lightning precisions.

`python -m benchmark perf [--methods ...] [--n-images N] [--size S]` prints images/s. Methods are
timed with their default configuration and untrained weights (speed does not depend on training).
`python -m benchmark perf --train [--methods ...] [--preset tiny] [--precisions 32-true bf16-mixed]` times training
iterations of each method as configured for the preset (its batch and model size), alternating the precisions over
`--repeats` rounds so that both see the same machine load, and prints the median seconds per iteration and the ratio.
"""
from __future__ import annotations

import time

import torch


def _time(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(args) -> int:
    if getattr(args, "train", False):
        return train_main(args)
    args.methods = args.methods or ["identity", "histmatch"]
    from benchmark.scoring.scorer import RandomFeatures, Scorer
    from datasets.skull_sim import DOMAINS
    from methods import get_method

    torch.manual_seed(0)
    n, size = args.n_images, args.size
    x_src = torch.rand(n, 1, size, size) * 2 - 1
    x_hat = (x_src + 0.1 * torch.randn_like(x_src)).clamp(-1, 1)
    print(f"images/s, {n} images of {size}x{size}, {torch.get_num_threads()} threads (best of repeats)", flush=True)
    scorer = Scorer(feature_extractor=RandomFeatures(), n_boot=1000)
    ref = scorer.reference(x_src, {"perf": n})
    sec = _time(lambda: scorer.score(x_hat, x_src, x_src, ref))
    print(f"{n / sec:10.1f}  scorer (SSIM+PSNR vs source and gt, NPS, W1, random-feature FID/KID/PRDC, bootstrap)",
          flush=True)
    for name in args.methods:
        method = get_method(name)(domains=DOMAINS, sources=DOMAINS[:2], target="real_normal", image_size=size).eval()
        if hasattr(method, "counts"):
            method.counts.fill_(1.0)  # histmatch: uniform histograms stand in for fitted ones
        knob = method.knob_grid[0]
        m = min(n, 16)
        sec = _time(lambda method=method, m=m, knob=knob: method.translate(x_src[:m], "syn_low", "real_normal", knob),
                    repeat=1)
        print(f"{m / sec:10.1f}  {name}.translate (default config, knob {knob}, nfe {method.nfe(knob)})", flush=True)
    return 0


def train_seconds(method, datamodule, precision: str, iterations: int, accelerator: str = "cpu") -> float:
    """Seconds per training iteration of a fresh copy of `method` at `precision` (after one warm-up iteration)."""
    import copy
    import logging
    import warnings

    import lightning as L
    from lightning.pytorch.callbacks import Callback

    class Clock(Callback):
        t0 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == type(method).optimizer_steps_per_iteration and self.t0 is None:
                self.t0 = time.perf_counter()  # from the second iteration on

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    clock = Clock()
    per_iter = type(method).optimizer_steps_per_iteration
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=(iterations + 1) * per_iter,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(copy.deepcopy(method), datamodule=datamodule)
    return (time.perf_counter() - clock.t0) / iterations


def train_main(args) -> int:
    """Training speed per learned method at each precision, alternated over rounds (`module docstring`)."""
    import statistics

    from benchmark.protocol.config import RunSpec, resolve_config
    from datasets import get_task, load_dataset
    from datasets.datamodule import TranslationDataModule
    from methods import get_method

    if args.unet_sizes:
        return unet_main(args)
    dataset = load_dataset("skull-sim", preset=args.preset)
    task = get_task("sim2real", dataset.domains)
    print(f"seconds per training iteration on {args.preset} ({args.accelerator}), {torch.get_num_threads()} threads, "
          f"median of {args.repeats} alternating rounds of {args.iterations} iterations", flush=True)
    from methods import METHODS

    for name in args.methods or list(METHODS):
        cls = get_method(name)
        config = resolve_config(RunSpec(name, preset=args.preset))
        if "max_steps" not in config:
            continue
        method = cls(domains=dataset.domains, sources=task.sources, target=task.target, image_size=dataset.size,
                     **config)
        domains = cls.training_domains(dataset.domains, task.sources, task.target, config)
        dm = TranslationDataModule(dataset, domains, batch_size=method.train_batch_size, pairing=cls.pairing,
                                   target=task.target, drop_last=cls.drop_last)
        times = {p: [] for p in args.precisions}
        for _ in range(args.repeats):
            for p in args.precisions:
                times[p].append(train_seconds(method, dm, p, args.iterations, args.accelerator))
        med = {p: statistics.median(v) for p, v in times.items()}
        base = med[args.precisions[0]]
        cells = "  ".join(f"{p} {v:.3f} s ({base / v:.2f}x)" for p, v in med.items())
        print(f"{name:16s} {cells}", flush=True)
    return 0


def unet_step_seconds(method, size: int, batch: int, precision: str, device: torch.device, iterations: int) -> float:
    """Median seconds of one training iteration (forward, backward, AdamW) of a MedShift-like `method` on random
    `size`-pixel images, its own `training_step` under autocast for bf16 (after two warm-up iterations)."""
    import statistics

    method = method.to(device).train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)
    data = {"image": torch.randn(batch, 1, size, size, device=device),
            "domain": torch.randint(0, len(method.domains), (batch,), device=device)}
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = method.training_step(data, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = []
    for i in range(iterations + 2):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def unet_main(args) -> int:
    """MedShift's U-Net (as configured for `--preset`) trained on random images of each of `--unet-sizes`, pixel space,
    at each precision on `--accelerator`: what a larger image costs per iteration (the paper's 512 px question)."""
    import logging
    import warnings

    from benchmark.protocol.config import RunSpec, resolve_config
    from datasets.skull_sim import DOMAINS
    from methods import get_method

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    config = resolve_config(RunSpec("medshift", preset=args.preset))
    batch = int(config.get("batch_size", 16))
    print(f"MedShift U-Net ({args.preset} config, batch {batch}) seconds per training iteration on {device}, "
          f"median of {args.iterations}", flush=True)
    for size in args.unet_sizes:
        method = get_method("medshift")(domains=DOMAINS, sources=DOMAINS[:2], target="real_normal", image_size=size,
                                        **config)
        cells = []
        for p in args.precisions:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # self.log outside a Trainer
                sec = unet_step_seconds(method, size, batch, p, device, args.iterations)
            cells.append(f"{p} {sec:.4f} s ({batch / sec:.0f} images/s)")
        print(f"{size:5d} px  " + "  ".join(cells), flush=True)
    return 0
