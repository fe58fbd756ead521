"""Fourier binning + per-subtomogram normalisation of a batch: tomosift's (torch FFT) against
the same operations in numpy, side by side in one run.

    .venv/bin/python benchmarks/binning.py [--batch 64] [--box 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from machine import machine_line

from tomosift.classify.inputs import fourier_bin, normalise_volumes


def numpy_bin_normalise(volumes: np.ndarray, factor: int) -> np.ndarray:
    """The numpy reference: crop the central frequencies, then zero mean / unit variance."""
    n = volumes.shape[-1]
    m = n // factor
    spectrum = np.fft.rfftn(volumes, axes=(1, 2, 3))
    keep = np.r_[0 : m // 2, n - m // 2 : n]
    cropped = spectrum[:, keep][:, :, keep][..., : m // 2 + 1]
    binned = np.fft.irfftn(cropped, s=(m, m, m), axes=(1, 2, 3)) / factor**3
    flat = binned.reshape(len(binned), -1)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / flat.std(axis=1, keepdims=True)
    return flat.reshape(binned.shape).astype(np.float32)


def seconds_per_subtomogram(function, repeats: int, batch: int) -> float:
    function()
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--box", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volumes = np.random.default_rng(0).standard_normal(
        (args.batch, *(args.box,) * 3)).astype(np.float32)
    print(machine_line())
    print(f"batch {args.batch} x {args.box}³, binning 2, {args.threads} threads, best of "
          f"{args.repeats}")
    ours = seconds_per_subtomogram(lambda: normalise_volumes(fourier_bin(volumes, 2)),
                                   args.repeats, args.batch)
    reference = seconds_per_subtomogram(lambda: numpy_bin_normalise(volumes, 2), args.repeats,
                                        args.batch)
    difference = np.abs(normalise_volumes(fourier_bin(volumes, 2))
                        - numpy_bin_normalise(volumes, 2)).max()
    print(f"numpy: {reference:.2e} s/subtomogram; tomosift (torch): {ours:.2e} s/subtomogram "
          f"({reference / ours:.1f}x); largest difference {difference:.1e}")


if __name__ == "__main__":
    main()
