"""Where and how a network runs: device, CPU threads, precision and memory layout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from tomosift.errors import TomosiftError


def choose_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TomosiftError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


@contextlib.contextmanager
def limited_threads(threads: int | None) -> Iterator[None]:
    """Run the block on at most ``threads`` CPU threads (PyTorch's and the BLAS/OpenMP pools
    of numpy, scipy and scikit-learn); None = no limit. Restores the previous limits."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise TomosiftError(f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)


def use_bfloat16(device: torch.device, precision: str = "auto") -> bool:
    """Whether to compute in bfloat16 (mixed precision, float32 weights).

    ``auto``: on CUDA devices that support it, and on CPUs with native bfloat16 instructions
    (AVX512-BF16 or AMX), where it trains 1.5-2.4x faster (docs/benchmarks.md).
    """
    if precision != "auto":
        return precision == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return bool(native)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to its device; channels-last memory on CPU (faster 3D convolutions)."""
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def as_input(volumes: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A (B, n, n, n) or (B, 1, n, n, n) batch as the network's input tensor on ``device``."""
    inputs = torch.as_tensor(volumes)
    if inputs.dim() == 4:
        inputs = inputs.unsqueeze(1)
    inputs = inputs.to(device, non_blocking=True)
    if device.type == "cpu":
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    return inputs
