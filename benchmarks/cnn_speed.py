"""CNN training and inference speed on this machine, every variant measured in one run.

Inference: seconds per 40³ subtomogram (batch 64, 23 classes) for plain eager float32 and
for faster CPU paths (channels-last memory, bfloat16 autocast, torch.compile, thread counts),
with the ratio against eager float32. Training: seconds per subtomogram per epoch (one SGD
step on a batch of 64) for float32 and for the path tomosift uses by default.
``--binning-only``: the paths tomosift uses (training channels-last bfloat16, inference
channels-last float32) on the full 40³ box and Fourier-binned by 2 (20³), Fourier binning
included, with the ratio.

    python benchmarks/cnn_speed.py [--models inception3d dsrf3d] [--compile] [--binning-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from tomosift.classify.models import build_model

BATCH = 64
BOX = 40
CLASSES = 23


def _inputs(channels_last: bool, box: int = BOX) -> torch.Tensor:
    volumes = torch.randn(BATCH, 1, box, box, box)
    return volumes.contiguous(memory_format=torch.channels_last_3d) if channels_last else volumes


def inference_seconds(architecture: str, channels_last: bool, bfloat16: bool, compiled: bool,
                      repeats: int = 4, box: int = BOX) -> float:
    model = build_model(architecture, CLASSES, box).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if compiled:
        model = torch.compile(model)
    inputs = _inputs(channels_last, box)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
        model(inputs)  # warm-up (and compilation)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - started)
    return min(times) / BATCH


def training_seconds(architecture: str, channels_last: bool, bfloat16: bool,
                     repeats: int = 3, box: int = BOX) -> float:
    model = build_model(architecture, CLASSES, box).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    inputs = _inputs(channels_last, box)
    targets = torch.randint(0, CLASSES, (BATCH,))
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        optimiser.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
            loss = F.cross_entropy(model(inputs).float(), targets)
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - started)
    return min(times[1:]) / BATCH


def bfloat16_agreement(model_path: str, data_path: str) -> None:
    """How exact bfloat16 inference is: predictions and scores against float32."""
    import numpy as np

    from tomosift.classify.predict import predict

    _, fp32, _ = predict(model_path, data_path, "test", device="cpu", progress=False,
                         precision="float32")
    _, bf16, _ = predict(model_path, data_path, "test", device="cpu", progress=False,
                         precision="bfloat16")
    agree = float((fp32.argmax(1) == bf16.argmax(1)).mean())
    spread = float(np.abs(fp32).max())
    print(f"bfloat16 vs float32 on {len(fp32)} test subtomograms ({model_path}): same class for "
          f"{agree:.1%}, largest score difference {np.abs(fp32 - bf16).max():.3g} "
          f"(scores up to {spread:.3g})")


def binning_seconds(factor: int = 2, repeats: int = 3) -> float:
    """Seconds per subtomogram to Fourier-bin a batch of 64 (40³ -> 40/factor)."""
    import numpy as np

    from tomosift.classify.inputs import fourier_bin

    volumes = np.random.default_rng(0).standard_normal((BATCH, BOX, BOX, BOX), np.float32)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fourier_bin(volumes, factor)
        times.append(time.perf_counter() - started)
    return min(times) / BATCH


def compare_binning(models: list[str]) -> None:
    """The default training and inference paths at 40³ and binned by 2, in one run."""
    binning = binning_seconds(2)
    print(f"\nFourier binning 40³ -> 20³: {binning:.5f} s per subtomogram")
    for architecture in models:
        full_train = training_seconds(architecture, True, True)
        half_train = training_seconds(architecture, True, True, box=BOX // 2) + binning
        full_infer = inference_seconds(architecture, True, False, False)
        half_infer = inference_seconds(architecture, True, False, False, box=BOX // 2) + binning
        print(f"{architecture}: training {full_train:.4f} (40³) vs {half_train:.4f} (binned 2, "
              f"{full_train / half_train:.2f}x); inference {full_infer:.4f} vs {half_infer:.4f} "
              f"({full_infer / half_infer:.2f}x) s per subtomogram")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["inception3d", "dsrf3d", "resnet3d"])
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    parser.add_argument("--model", help="a trained model, to check bfloat16 against float32")
    parser.add_argument("--data", help="the dataset of --model")
    parser.add_argument("--binning-only", action="store_true",
                        help="only compare the full box with Fourier binning by 2")
    args = parser.parse_args()
    if args.model and args.data:
        bfloat16_agreement(args.model, args.data)
    cores = os.cpu_count()
    print(f"machine: {platform.machine()} {platform.processor()}, {cores} cores, "
          f"torch {torch.__version__}, native bf16: "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    if args.binning_only:
        compare_binning(args.models)
        return
    variants = [("eager float32", False, False, False),
                ("channels-last float32", True, False, False),
                ("eager bfloat16", False, True, False),
                ("channels-last bfloat16", True, True, False)]
    if args.compile:
        variants += [("compiled float32", False, False, True),
                     ("compiled channels-last bfloat16", True, True, True)]
    for architecture in args.models:
        print(f"\n{architecture}: inference, s per subtomogram (batch {BATCH})")
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            baseline = None
            for name, channels_last, bfloat16, compiled in variants:
                seconds = inference_seconds(architecture, channels_last, bfloat16, compiled)
                baseline = baseline or seconds
                print(f"  {threads} thread(s) {name:34s} {seconds:.4f}  "
                      f"({baseline / seconds:.2f}x eager float32)")
        torch.set_num_threads(cores)
        fp32 = training_seconds(architecture, False, False)
        fast = training_seconds(architecture, True, True)
        print(f"{architecture}: training, s per subtomogram per epoch, {cores} threads: "
              f"float32 {fp32:.4f}, channels-last bfloat16 {fast:.4f} ({fp32 / fast:.2f}x)")


if __name__ == "__main__":
    main()
