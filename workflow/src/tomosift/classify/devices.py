"""Where and how a network runs: device, CPU threads, precision and memory layout."""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """Run the block with PyTorch's deterministic algorithms (restoring the previous state).

    On the CPU, tomosift's training is bit-reproducible for a given thread count and CPU
    without this (measured, issue 19); the mode guards against an operation with a
    nondeterministic kernel (it raises). PyTorch's filling of the memory ``torch.empty``
    returns, which this mode turns on, is turned off: it cost 15-20% of a binned DSRF3D
    epoch on the CPU, and no tomosift operation reads uninitialised memory.
    On CUDA it also selects deterministic cuDNN convolutions and cuBLAS workspaces; there
    the backward passes of 3D max and average pooling have no deterministic kernel, so
    PyTorch only warns about them (``warn_only``) and CUDA training is not bit-reproducible.
    ``enabled=False`` leaves everything as it is.
    """
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                torch.utils.deterministic.fill_uninitialized_memory)
    if device.type == "cuda":
        # cuBLAS reads this when it first starts; later changes have no effect.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:4]
        torch.utils.deterministic.fill_uninitialized_memory = previous[4]
