"""Method names and the CNN training recipe, importable without torch (the command line
builds its parser from them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tomosift.errors import TomosiftError

ARCHITECTURES = ("inception3d", "dsrf3d", "resnet3d")
METHODS = (*ARCHITECTURES, "rif-svm")
PRECISIONS = ("auto", "float32", "bfloat16")
NORMALISATIONS = ("per_subtomogram", "none")


@dataclass(frozen=True)
class TrainingSettings:
    """How a CNN is trained (defaults: the paper's recipe).

    ``input_binning`` (tomosift's addition, default 1 = the paper's full box): Fourier-bin
    each subtomogram by this factor before it enters the network (40³ -> 20³ for 2), keeping
    only the frequencies below 1/factor of Nyquist; see :func:`tomosift.train.fourier_bin`.
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

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TomosiftError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.architecture not in ARCHITECTURES:
            raise TomosiftError(f"unknown model '{self.architecture}'; choose one of {METHODS}")
        if self.normalise not in NORMALISATIONS:
            raise TomosiftError(f"normalise must be one of {', '.join(NORMALISATIONS)}")
        if self.input_binning < 1:
            raise TomosiftError(f"input_binning must be >= 1, got {self.input_binning}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise TomosiftError("epochs and batch_size must be >= 1 and the learning rate > 0")


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
