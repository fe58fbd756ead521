"""Method names and the CNN training recipe, importable without torch (the command line
builds its parser from them)."""

from __future__ import annotations

from dataclasses import dataclass

from tomosift.errors import TomosiftError

ARCHITECTURES = ("inception3d", "dsrf3d", "resnet3d")
METHODS = (*ARCHITECTURES, "rif-svm")
PRECISIONS = ("auto", "float32", "bfloat16")
NORMALISATIONS = ("per_subtomogram", "none")


@dataclass(frozen=True)
class TrainingSettings:
    """How a CNN is trained (defaults: the paper's recipe)."""

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

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TomosiftError("precision must be auto, float32 or bfloat16")
        if self.architecture not in ARCHITECTURES:
            raise TomosiftError(f"unknown model '{self.architecture}'; choose one of {METHODS}")
        if self.normalise not in NORMALISATIONS:
            raise TomosiftError("normalise must be 'per_subtomogram' or 'none'")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise TomosiftError("epochs and batch_size must be >= 1 and the learning rate > 0")
