"""Training classifiers on simulated datasets (paper Section 3.2.1).

CNNs are trained as the paper did: SGD with Nesterov momentum 0.9, learning rate 0.01 decayed
per iteration as ``lr / (1 + decay * t)`` (Keras's ``decay``, 1e-6), batch 64, 20 epochs,
categorical cross-entropy. The train split's volumes are read, binned and normalised once and
held in memory (``cache_volumes``, default on; float16 above 2 GiB, see
:func:`tomosift.classify.inputs.cache_dtype`); without the cache they stream from the HDF5
file one batch at a time, as in tomosift <= 0.3. The cache's load time is counted in the first
epoch's time.

Gradient clipping (tomosift's addition, ``clip_grad_norm: 1.0``): with the paper's learning
rate, Inception3D's output layer (786 080 inputs for a 40³ box) takes steps so large in the
first iterations that the loss jumps to ~15 and the network stalls at chance level; clipping
the gradient norm to 1 removes this (on the demo data: train accuracy 0.63 after 8 epochs
instead of 0.12) and leaves DSRF3D's learning unchanged. ``clip_grad_norm: null`` is the
paper's exact recipe.

Resuming: a checkpoint is written after every epoch (atomically); a killed job started again
continues from the last finished epoch, if the checkpoint belongs to the same training: the
same settings (threads and device aside, which do not change what is learnt) on the same data
(the dataset's identity, :func:`tomosift.classify.inputs.dataset_identity`, not its path).
Shuffling and dropout are seeded per epoch from the training seed, so an interrupted and
resumed run gives the same weights as an uninterrupted one (on the same device).

Determinism (``deterministic``, default on; issue 19): on the CPU, training is
bit-reproducible for a given CPU, thread count and precision, in one process or in several at
once (measured: two DSRF3D trainings in parallel give identical weights, bfloat16 autocast
included). What changes the weights is the thread count (2 threads vs 1 differ from the first
step: oneDNN and ATen split the convolutions' and the gradients' sums by thread) and the CPU
(``precision: auto`` is bfloat16 on CPUs with AVX512-BF16/AMX, float32 elsewhere; kernels
differ by instruction set). Small differences grow under SGD, most at low SNR where the
network hovers near chance: the demo's DSRF3D at SNR 0.5 scored 0.413 and 0.354. With
``deterministic`` on, PyTorch's deterministic algorithms are enforced, the random generators
are forked so that the caller's global state neither matters nor changes, and a checkpoint
resumes only on the thread count and device it was written with; the model file records both.

Class averages: after the last epoch, one average per class of at most
``class_average_members`` (100) train particles, un-posed with their true poses, is stored in
the model file (20³; :mod:`tomosift.classify.class_averages`), the references of ``tomosift
census --references training``; a dataset without true poses stores none.

Progress: every epoch ends with a line on stderr (the job's log in the workflow) giving the
loss, the accuracy, the rate and the time left; within an epoch, a progress bar on a terminal
or a line every 30 s in a log.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tomosift.classify.class_averages import CLASS_AVERAGE_MEMBERS, class_averages
from tomosift.classify.devices import (
    as_input,
    choose_device,
    deterministic_algorithms,
    limited_threads,
    prepare_model,
    use_bfloat16,
)
from tomosift.classify.inputs import (
    SplitData,
    binned_box,
    cache_dtype,
    cache_volumes,
    dataset_identity,
    plain,
    read_split,
    read_volumes,
)
from tomosift.classify.metric import supervised_contrastive_loss
from tomosift.classify.modelfile import CLASS_AVERAGES_TENSOR, save_model
from tomosift.classify.models import build_model
from tomosift.datasets import open_dataset
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path
from tomosift.progress import format_seconds, progress_bar
from tomosift.recipe import RUNTIME_SETTINGS, TrainingSettings, method_settings


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    seconds_per_subtomogram: float
    learning_rate: float
    embedding_loss: float | None = None  # the supervised contrastive part of ``loss``


def augment_batch(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 180° rotations about x, y or z (or none) per subtomogram.

    These are the proper rotations that map a missing wedge about the y tilt axis onto itself,
    so augmented subtomograms stay physically possible.
    """
    planes = [None, (3, 4), (2, 4), (2, 3)]  # identity, about z, about y, about x
    choices = torch.randint(0, 4, (len(batch),), generator=generator)
    out = batch.clone()
    for i, choice in enumerate(choices.tolist()):
        if planes[choice] is not None:
            out[i] = torch.rot90(batch[i : i + 1], 2, planes[choice])[0]
    return out


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, 11, epoch]).generate_state(1)[0])


def checkpoint_identity(settings: TrainingSettings, data_path: str | os.PathLike,
                        n_train: int, device: torch.device | None = None) -> dict:
    """What a checkpoint must match to be resumed: the settings that change the result and
    the dataset's content; for a deterministic training also the thread count in use and the
    device (see the module docstring)."""
    learnt = {k: v for k, v in asdict(settings).items() if k not in RUNTIME_SETTINGS}
    identity = {"settings": learnt, "data": dataset_identity(data_path), "n_train": n_train}
    if settings.deterministic:
        identity["runtime"] = {"threads": torch.get_num_threads(),
                               "device": str(device or choose_device(settings.device))}
    return identity


def train_cnn(
    data_path: str | os.PathLike,
    settings: TrainingSettings,
    out_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    method: str | None = None,
    class_average_members: int = CLASS_AVERAGE_MEMBERS,
) -> list[EpochRecord]:
    """Train a CNN on the train split of a dataset file and save it to ``out_path``.

    Args:
        data_path: the dataset (HDF5, see :mod:`tomosift.datasets`).
        settings: the training recipe (``settings.threads`` caps the CPU threads).
        out_path: the trained model file (written at the end, atomically).
        checkpoint_path: per-epoch checkpoint (default ``<out_path>.ckpt``); a matching one
            is resumed from and removed after success.
        progress: report progress on stderr.
        stop_after_epochs: stop (without writing ``out_path``) after this many epochs in this
            call; for tests of interrupted runs.
        method: the name the model is saved under (default: the architecture); a config's
            named variant, such as ``dsrf3d-bin2``.
        class_average_members: train particles averaged per class for the stored class
            averages (module docstring); 0 stores none.

    Returns:
        The training history, one record per epoch.
    """
    if class_average_members < 0:
        raise TomosiftError(f"class_average_members must be >= 0, got {class_average_members}")
    with limited_threads(settings.threads):
        return _train_cnn(data_path, settings, Path(out_path),
                          Path(checkpoint_path or f"{out_path}.ckpt"), progress,
                          stop_after_epochs, method, class_average_members)


def learning_rate_schedule(optimiser: torch.optim.Optimizer, settings: TrainingSettings,
                           n_train: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-iteration learning-rate schedule of ``settings.schedule`` (see
    :class:`tomosift.recipe.TrainingSettings`) for ``n_train`` training subtomograms."""
    if settings.schedule == "one_cycle":
        steps = settings.epochs * -(-n_train // settings.batch_size)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=settings.learning_rate, total_steps=steps, pct_start=0.3,
            base_momentum=0.85, max_momentum=0.95)
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda iteration: 1.0 / (1.0 + settings.lr_decay * iteration))


def _train_cnn(data_path, settings: TrainingSettings, out_path: Path, checkpoint_path: Path,
               progress: bool, stop_after_epochs: int | None, method: str | None,
               class_average_members: int = CLASS_AVERAGE_MEMBERS):
    data = read_split(data_path, "train", settings.exclude_classes)
    device = choose_device(settings.device)
    # Fork the generators: seeding below neither depends on nor changes the caller's state.
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), \
            deterministic_algorithms(settings.deterministic, device):
        return _train_seeded(data_path, data, device, settings, out_path, checkpoint_path,
                             progress, stop_after_epochs, method, class_average_members)


def _train_seeded(data_path, data: SplitData, device: torch.device, settings: TrainingSettings,
                  out_path: Path, checkpoint_path: Path, progress: bool,
                  stop_after_epochs: int | None, method: str | None,
                  class_average_members: int = CLASS_AVERAGE_MEMBERS):
    torch.manual_seed(settings.seed)
    try:
        box = binned_box(data.box_voxels, settings.input_binning)
    except TomosiftError as error:
        raise TomosiftError(f"{data_path}: {error}") from None
    model = prepare_model(build_model(settings.architecture, len(data.class_names), box,
                                      settings.dropout, settings.embedding_dim), device)
    optimiser = torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                                momentum=settings.momentum, nesterov=True)
    schedule = learning_rate_schedule(optimiser, settings, len(data.indices))
    history: list[EpochRecord] = []
    identity = checkpoint_identity(settings, data_path, len(data.indices), device)
    if checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if saved.get("identity") == identity:
            model.load_state_dict(saved["model"])
            optimiser.load_state_dict(saved["optimiser"])
            schedule.load_state_dict(saved["schedule"])
            history = [EpochRecord(**record) for record in saved["history"]]
    use_bf16 = use_bfloat16(device, settings.precision)
    name = method or settings.architecture
    epochs_this_call = 0
    cache, cache_seconds = None, 0.0
    with open_dataset(data_path) as h5:
        for epoch in range(len(history), settings.epochs):
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                return history
            if settings.cache_volumes and cache is None and epochs_this_call == 0:
                cache, cache_seconds = _load_cache(h5, data, settings, progress, name)
            record = _train_epoch(model, optimiser, schedule, h5, data, settings, epoch,
                                  device, use_bf16, progress, name, cache, cache_seconds)
            cache_seconds = 0.0
            history.append(record)
            epochs_this_call += 1
            with atomic_path(checkpoint_path) as tmp:
                torch.save({"identity": identity, "model": model.state_dict(),
                            "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                            "history": [asdict(r) for r in history]}, tmp)
            if progress:
                _report_epoch(name, record, settings.epochs, epochs_this_call, history)
    say = (lambda text: print(f"{name}: {text}", file=sys.stderr, flush=True)) if progress \
        else None
    averages = (class_averages(data_path, data.indices, data.labels, data.class_names,
                               class_average_members, settings.seed, progress=say)
                if class_average_members else None)
    save_model(out_path, {
        **_trained_on(data),
        "class_averages": None if averages is None else averages[1],
        "method": name,
        "architecture": settings.architecture,
        "settings": asdict(settings),
        "history": [asdict(r) for r in history],
        "device": str(device) + (" (bfloat16 mixed precision)" if use_bf16 else ""),
        "embedding_dim": settings.embedding_dim,
        # what, besides settings and data, fixes the weights' last bits (module docstring)
        "reproducibility": {"deterministic": settings.deterministic,
                            "threads": torch.get_num_threads(), "device": str(device),
                            "torch": torch.__version__},
    }, {**model.state_dict(),
        **({} if averages is None else {CLASS_AVERAGES_TENSOR: averages[0]})})
    checkpoint_path.unlink(missing_ok=True)
    return history


def _report_epoch(name: str, record: EpochRecord, epochs: int, done_this_call: int,
                  history: list[EpochRecord]) -> None:
    """One line per finished epoch: loss, accuracy, rate and the time left."""
    recent = history[-done_this_call:]
    seconds_per_epoch = sum(r.seconds for r in recent) / len(recent)
    left = format_seconds(seconds_per_epoch * (epochs - record.epoch))
    print(f"{name} epoch {record.epoch}/{epochs}: loss {record.loss:.3f}, train accuracy "
          f"{record.accuracy:.3f}, {1 / record.seconds_per_subtomogram:.1f} subtomo/s, "
          f"{format_seconds(record.seconds)} per epoch, {left} left",
          file=sys.stderr, flush=True)


def _load_cache(h5, data: SplitData, settings: TrainingSettings, progress: bool,
                name: str) -> tuple[np.ndarray | None, float]:
    """The train split's prepared volumes in memory (None: too large to cache unnormalised)
    and the seconds it took."""
    started = time.perf_counter()
    box = binned_box(data.box_voxels, settings.input_binning)
    dtype = cache_dtype(len(data.indices), box, settings.normalise)
    if dtype is None:
        if progress:
            print(f"{name}: the train split is too large to hold unnormalised in memory; "
                  "reading it every epoch", file=sys.stderr, flush=True)
        return None, 0.0
    cache = cache_volumes(h5, data.indices, settings.normalise, settings.input_binning,
                          dtype=dtype)
    seconds = time.perf_counter() - started
    if progress:
        print(f"{name}: {len(cache)} train subtomograms in memory ({cache.nbytes / 1e6:.0f} MB "
              f"{dtype.name}, {format_seconds(seconds)})", file=sys.stderr, flush=True)
    return cache, seconds


def _train_epoch(model, optimiser, schedule, h5, data: SplitData, settings: TrainingSettings,
                 epoch: int, device, use_bf16: bool, progress: bool, name: str,
                 cache: np.ndarray | None = None, extra_seconds: float = 0.0) -> EpochRecord:
    """One epoch; ``cache``: the prepared train volumes (rows as ``data.indices``), else read
    from ``h5``; ``extra_seconds`` (the cache's loading) is added to the epoch's time."""
    model.train()
    seed = _epoch_seed(settings.seed, epoch)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(data.indices))
    started = time.perf_counter() - extra_seconds
    total_loss, total_embedding, correct, seen = 0.0, 0.0, 0, 0
    batches = range(0, len(order), settings.batch_size)
    bar = progress_bar(batches, desc=f"{name} epoch {epoch + 1}/{settings.epochs}",
                       unit="batch", enabled=progress, leave=False)
    for start in bar:
        chosen = order[start : start + settings.batch_size]
        if cache is not None:
            volumes = cache[chosen].astype(np.float32, copy=False)
        else:
            volumes = read_volumes(h5, data.indices[chosen], settings.normalise,
                                   settings.input_binning)
        inputs = torch.from_numpy(volumes).unsqueeze(1)
        if settings.augment:
            inputs = augment_batch(inputs, generator)
        inputs = as_input(inputs, device)
        targets = torch.from_numpy(data.labels[chosen]).to(device)
        optimiser.zero_grad(set_to_none=True)
        embedding = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if settings.embedding_dim is None:
                logits = model(inputs)
            else:
                hidden = model.hidden_features(inputs)
                logits = model.head(hidden)
                embedding = model.embed_hidden(hidden)
            loss = F.cross_entropy(logits.float(), targets)
        if embedding is not None:  # outside autocast: the similarities in float32
            contrastive = supervised_contrastive_loss(embedding, targets,
                                                      settings.embedding_temperature)
            loss = loss + settings.embedding_weight * contrastive
            total_embedding += contrastive.item() * len(chosen)
        loss.backward()
        if settings.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
        optimiser.step()
        schedule.step()
        total_loss += loss.item() * len(chosen)
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += len(chosen)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - started
    return EpochRecord(epoch + 1, total_loss / seen, correct / seen, seconds, seconds / seen,
                       float(optimiser.param_groups[0]["lr"]),
                       None if settings.embedding_dim is None else total_embedding / seen)


def _trained_on(data: SplitData) -> dict:
    """The header fields every model file carries: classes, box and the training data."""
    return {
        "class_names": data.class_names,
        "box_voxels": data.box_voxels,
        "trained_on": {"path": str(data.path), "n_train": len(data.indices),
                       "train_indices_sha256": hashlib.sha256(
                           np.ascontiguousarray(data.indices, dtype=np.int64).tobytes()
                       ).hexdigest(),
                       **{k: plain(data.attrs.get(k)) for k in (
                           "noise_model", "snr", "dose_e_per_a2", "tilt_max_deg", "seed",
                           "reconstruction", "voxel_size_nm", "polarity") if k in data.attrs}},
    }


def train_rif_svm(
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    rif_settings=None,
    c_grid=None,
    gamma_grid=None,
    cv_folds: int = 3,
    seed: int = 1,
    progress: bool = True,
    threads: int | None = None,
) -> dict:
    """The RIF-SVM baseline: rotation-invariant features of the train split and an RBF SVM
    whose C and gamma are chosen by cross-validation on the train split only.

    Returns:
        The training record saved with the model (chosen C and gamma, CV accuracy, timings).
    """
    from tomosift.classify.rif import (
        DEFAULT_C_GRID,
        DEFAULT_GAMMA_GRID,
        RifSettings,
        RifSvm,
        features_from_dataset,
    )

    rif_settings = rif_settings or RifSettings()
    data = read_split(data_path, "train")
    with limited_threads(threads):
        started = time.perf_counter()
        with open_dataset(data_path) as h5:
            features = features_from_dataset(h5, data.indices, rif_settings, progress=progress)
        feature_seconds = time.perf_counter() - started
        classifier = RifSvm().fit(features, data.labels, c_grid or DEFAULT_C_GRID,
                                  gamma_grid or DEFAULT_GAMMA_GRID, cv_folds, seed)
        total_seconds = time.perf_counter() - started
    record = {
        "feature_seconds_per_subtomogram": feature_seconds / len(data.indices),
        "fit_seconds": total_seconds - feature_seconds,
        "chosen_c": classifier.c,
        "chosen_gamma": classifier.gamma,
        "cv_accuracy": classifier.cv_score,
    }
    save_model(out_path, {
        **_trained_on(data),
        "method": "rif-svm",
        "rif_settings": asdict(rif_settings),
        "history": [],
        "training": record,
        "train_seconds_per_subtomogram": total_seconds / len(data.indices),
        "device": "cpu",
    }, classifier.arrays.to_arrays())
    if progress:
        cv = "n/a" if classifier.cv_score is None else f"{classifier.cv_score:.3f}"
        print(f"rif-svm: C {classifier.c:g}, gamma {classifier.gamma}, cross-validated "
              f"accuracy {cv}, {format_seconds(total_seconds)}", file=sys.stderr, flush=True)
    return record


def train_method(
    method: str,
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    settings: dict,
    seed: int = 1,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    threads: int | None = None,
    device: str = "auto",
    class_average_members: int = CLASS_AVERAGE_MEMBERS,
):
    """Train ``method`` (a CNN architecture, a named variant of one, or ``rif-svm``).

    Args:
        settings: the method's resolved settings: for a CNN the fields of
            :class:`TrainingSettings` but seed, threads and device (see
            :func:`method_settings`); for the RIF-SVM the ``rif`` section of the config.
        threads, device: where it runs (they do not change what is learnt).
        class_average_members: a CNN's stored class averages (see :func:`train_cnn`).
    """
    if method == "rif-svm":
        from tomosift.classify.rif import RifSettings

        return train_rif_svm(
            data_path, out_path,
            RifSettings(max_degree=settings.get("max_degree", 10), shells=settings.get("shells")),
            settings.get("c_grid"), settings.get("gamma_grid"), settings.get("cv_folds", 3),
            seed, progress, threads,
        )
    settings = {**settings, "exclude_classes": tuple(settings.get("exclude_classes", ()))}
    training = TrainingSettings(**settings, seed=seed, threads=threads, device=device)
    return train_cnn(data_path, training, out_path, checkpoint_path, progress, method=method,
                     class_average_members=class_average_members)


def settings_from_config(classification: dict, method: str, seed: int) -> TrainingSettings:
    """CNN training settings of ``method`` from the workflow's ``classification`` section
    (threads and device included)."""
    return TrainingSettings(**method_settings(classification, method), seed=seed,
                            threads=classification.get("threads"),
                            device=classification.get("device", "auto"))
