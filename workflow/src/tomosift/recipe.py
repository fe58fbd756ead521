"""Method names and the CNN training recipe, importable without torch (the command line
builds its parser from them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from tomosift.errors import TomosiftError

ARCHITECTURES = ("inception3d", "dsrf3d", "resnet3d")
METHODS = (*ARCHITECTURES, "rif-svm")
PRECISIONS = ("auto", "float32", "bfloat16")
NORMALISATIONS = ("per_subtomogram", "none")
SCHEDULES = ("paper", "one_cycle")
# Settings that do not change what a training learns: left out of a job's parameters and of a
# checkpoint's identity. (They do change the last bits of the weights: the thread count splits
# the floating-point sums differently. A deterministic training therefore resumes only a
# checkpoint of the same thread count and device; see tomosift.classify.train.)
RUNTIME_SETTINGS = ("threads", "device")


@dataclass(frozen=True)
class TrainingSettings:
    """How a CNN is trained (defaults: the paper's recipe).

    ``input_binning`` (tomosift's addition, default 1 = the paper's full box): Fourier-bin
    each subtomogram by this factor before it enters the network (40³ -> 20³ for 2), keeping
    only the frequencies below 1/factor of Nyquist; see
    :func:`tomosift.classify.inputs.fourier_bin`.

    ``exclude_classes``: classes whose particles are left out of training (the leave-one-out
    experiment); the network then has one output per remaining class.

    ``deterministic`` (default on): the same settings, data, thread count and device give
    bit-identical weights; PyTorch's deterministic algorithms are enforced and a checkpoint
    resumes only on the thread count and device it was written with (see
    :func:`tomosift.classify.devices.deterministic_algorithms`).

    ``cache_volumes`` (default on): the train split is read, binned and normalised once and
    held in memory (float32, or float16 above 2 GiB; see
    :func:`tomosift.classify.inputs.cache_volumes`) instead of being read every epoch.

    ``embedding_dim`` (default None = no embedding head): a second head, a linear map of the
    last hidden layer to a unit vector of this many dimensions, trained jointly with the
    classifier by the supervised contrastive loss (:mod:`tomosift.classify.metric`) with
    weight ``embedding_weight`` and temperature ``embedding_temperature``; its output is a
    feature layer of the discovery stage.

    ``schedule``: ``paper`` (default), the learning rate decayed per iteration as
    ``lr / (1 + lr_decay * t)``; ``one_cycle``, PyTorch's one-cycle policy over the whole
    training (warm-up over the first 30% of iterations to ``learning_rate``, then cosine
    annealing to 1/10⁴ of it, momentum cycled 0.85-0.95), for shorter trainings.
    """

    architecture: str = "inception3d"
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 0.01
    lr_decay: float = 1e-6
    momentum: float = 0.9
    dropout: float | None = None
    normalise: str = "per_subtomogram"
    augment: bool = False
    seed: int = 1
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"
    clip_grad_norm: float | None = 1.0
    input_binning: int = 1
    exclude_classes: tuple[str, ...] = ()
    deterministic: bool = True
    cache_volumes: bool = True
    embedding_dim: int | None = None
    embedding_weight: float = 1.0
    embedding_temperature: float = 0.1
    schedule: str = "paper"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TomosiftError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.architecture not in ARCHITECTURES:
            raise TomosiftError(f"unknown model '{self.architecture}'; choose one of {METHODS}")
        if self.normalise not in NORMALISATIONS:
            raise TomosiftError(f"normalise must be one of {', '.join(NORMALISATIONS)}")
        if self.schedule not in SCHEDULES:
            raise TomosiftError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.input_binning < 1:
            raise TomosiftError(f"input_binning must be >= 1, got {self.input_binning}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise TomosiftError("epochs and batch_size must be >= 1 and the learning rate > 0")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise TomosiftError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.embedding_weight < 0 or self.embedding_temperature <= 0:
            raise TomosiftError("embedding_weight must be >= 0 and embedding_temperature > 0")


def method_architecture(method: str, models: Mapping[str, Mapping] | None = None) -> str:
    """The architecture (or ``rif-svm``) that a method of the workflow config trains.

    A built-in method trains itself; any other name must be a variant under
    ``classification.models`` that names its ``architecture`` (for example
    ``dsrf3d-bin2: {architecture: dsrf3d, input_binning: 2}``).
    """
    variant = (models or {}).get(method, {})
    if method in METHODS:
        if variant.get("architecture", method) != method:
            raise TomosiftError(f"classification.models.{method}: a built-in method keeps its "
                                "architecture; give the variant a name of its own")
        return method
    if "architecture" not in variant:
        raise TomosiftError(f"classification.methods: unknown method '{method}'; choose one of "
                            f"{', '.join(METHODS)} or define it under classification.models "
                            "with an architecture")
    return variant["architecture"]


def method_settings(classification: dict, method: str) -> dict:
    """The resolved settings of one method from the workflow's ``classification`` section:
    for a CNN (an architecture or a named variant) the shared settings overridden by the
    method's own under ``classification.models``, without seed, threads and device; for the
    RIF-SVM its ``rif`` section. A job given only these reruns only when they change."""
    if method == "rif-svm":
        return dict(classification.get("rif", {}))
    models = classification.get("models", {})
    architecture = method_architecture(method, models)
    if architecture not in ARCHITECTURES:
        raise TomosiftError(f"'{method}' is not a CNN; choose one of {', '.join(ARCHITECTURES)}")
    per_model = {k: v for k, v in models.get(method, {}).items() if k != "architecture"}
    base = TrainingSettings(
        architecture=architecture,
        epochs=classification["epochs"],
        batch_size=classification["batch_size"],
        learning_rate=classification["learning_rate"],
        lr_decay=classification["lr_decay"],
        momentum=classification["momentum"],
        normalise=classification["normalise"],
        precision=classification.get("precision", "auto"),
        clip_grad_norm=classification.get("clip_grad_norm", 1.0),
        deterministic=classification.get("deterministic", True),
        cache_volumes=classification.get("cache_volumes", True),
        embedding_dim=classification.get("embedding_dim"),
        embedding_weight=classification.get("embedding_weight", 1.0),
        embedding_temperature=classification.get("embedding_temperature", 0.1),
        schedule=classification.get("schedule", "paper"),
    )
    resolved = asdict(replace(base, **per_model))
    return {k: v for k, v in resolved.items() if k not in ("seed", *RUNTIME_SETTINGS)}
