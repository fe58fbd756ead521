"""3D CNNs for subtomogram classification (paper Section 2.2) and a stronger third model.

Layer lists follow the authors' published Keras code for a box of n³ voxels, one channel:

* **Inception3D**: Conv 32@5³ valid → MaxPool 2³/2 → inception module [1³ conv 32; 1³ conv 32
  → 3³ conv 64; 1³ conv 16 → 5³ conv 32; MaxPool 2³ stride 1 'same' → 1³ conv 32],
  concatenated (160 channels) → AvgPool 2³ stride 1 → flatten → dropout → linear (L).
  Dropout: the paper's text says 70% of units are *retained* (drop 0.3); the published code
  used Keras ``Dropout(0.7)`` (drop 0.7). tomosift defaults to the text (0.3); set
  ``dropout=0.7`` for the code's behaviour.
* **DSRF3D**: [Conv 32@3³ same] × 2 → MaxPool 2³/2 → [Conv 64@3³ same] × 2 → MaxPool 2³/2 →
  FC 512 → FC 512 → linear (L).
* **ResNet3D** (tomosift's addition, not in the paper): three residual stages with batch
  normalisation and global average pooling; few parameters, so it generalises from fewer
  subtomograms; train it with ``augment: true``.

ReLU follows every hidden layer. The softmax is not part of the models: ``forward`` returns the
linear (pre-softmax) outputs, which are the *structural features* of the discovery stage
(paper Eq. 3); ``hidden_features`` returns the input of the last linear layer. Any cubic box
works: layer sizes are computed from ``box_voxels``.

Embedding head (tomosift's addition, ``build_model(..., embedding_dim=D)``): a linear map of
the last hidden layer to D dimensions, L2-normalised (:meth:`_Classifier.embedding`), trained
with the supervised contrastive loss (:mod:`tomosift.classify.metric`). Its weights are the
``embedding_head.*`` tensors of the state dict; a model without the head keeps the same
tensors, initialisation and outputs as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tomosift.errors import TomosiftError
from tomosift.recipe import ARCHITECTURES


class _SamePoolStride1(nn.Module):
    """Max pooling 2³ with stride 1 and TensorFlow's 'same' padding (pad after, by 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Replicating the edge keeps the maximum of the valid part of each window.
        return F.max_pool3d(F.pad(x, (0, 1, 0, 1, 0, 1), mode="replicate"), 2, stride=1)


class _Classifier(nn.Module):
    """What the three models share: ``forward`` = ``head(hidden_features(x))`` and the
    optional embedding head."""

    classifier: nn.Linear
    embedding_head: nn.Linear | None

    def __init__(self) -> None:
        super().__init__()
        self.embedding_head = None

    def hidden_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n, n, n) -> (B, H): the input of the last linear layer."""
        raise NotImplementedError

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) hidden features -> (B, n_classes) linear scores."""
        return self.classifier(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_features(x))

    def add_embedding_head(self, dim: int) -> None:
        """Add a Linear(H -> ``dim``) head on the hidden features (Glorot-uniform weights)."""
        self.embedding_head = nn.Linear(self.classifier.in_features, dim)
        nn.init.xavier_uniform_(self.embedding_head.weight)
        nn.init.zeros_(self.embedding_head.bias)

    def embed_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H) hidden features -> (B, D) unit-length float32 embeddings."""
        if self.embedding_head is None:
            raise TomosiftError("this model has no embedding head (train it with "
                                "--embedding-dim)")
        return F.normalize(self.embedding_head(hidden).float(), dim=1)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n, n, n) -> (B, D) unit-length embeddings."""
        return self.embed_hidden(self.hidden_features(x))


def _conv_relu(in_channels: int, out_channels: int, size: int, padding: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, size, padding=padding),
                         nn.ReLU(inplace=True))


class Inception3D(_Classifier):
    """Paper Fig. 1a. Input (B, 1, n, n, n); output (B, n_classes) linear scores."""

    def __init__(self, n_classes: int, box_voxels: int = 40, dropout: float = 0.3):
        super().__init__()
        if box_voxels < 8:
            raise TomosiftError(f"Inception3D needs a box of at least 8 voxels, got {box_voxels}")
        self.stem = nn.Sequential(_conv_relu(1, 32, 5, 0), nn.MaxPool3d(2, 2))
        self.branch_1 = _conv_relu(32, 32, 1, 0)
        self.branch_3 = nn.Sequential(_conv_relu(32, 32, 1, 0), _conv_relu(32, 64, 3, 1))
        self.branch_5 = nn.Sequential(_conv_relu(32, 16, 1, 0), _conv_relu(16, 32, 5, 2))
        self.branch_pool = nn.Sequential(_SamePoolStride1(), _conv_relu(32, 32, 1, 0))
        self.pool = nn.AvgPool3d(2, stride=1)
        side = (box_voxels - 4) // 2 - 1
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(160 * side**3, n_classes)

    def hidden_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch_1(x), self.branch_3(x), self.branch_5(x),
                       self.branch_pool(x)], dim=1)
        return torch.flatten(self.pool(x), 1)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


class DSRF3D(_Classifier):
    """Paper Fig. 1b. Input (B, 1, n, n, n); output (B, n_classes) linear scores."""

    def __init__(self, n_classes: int, box_voxels: int = 40, dropout: float = 0.0):
        super().__init__()
        if box_voxels < 4:
            raise TomosiftError(f"DSRF3D needs a box of at least 4 voxels, got {box_voxels}")
        self.convolutions = nn.Sequential(
            _conv_relu(1, 32, 3, 1), _conv_relu(32, 32, 3, 1), nn.MaxPool3d(2, 2),
            _conv_relu(32, 64, 3, 1), _conv_relu(64, 64, 3, 1), nn.MaxPool3d(2, 2),
        )
        side = box_voxels // 4
        self.fully_connected = nn.Sequential(
            nn.Linear(64 * side**3, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(512, n_classes)

    def hidden_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fully_connected(torch.flatten(self.convolutions(x), 1))


class _ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class ResNet3D(_Classifier):
    """A small 3D residual network (tomosift's third model). Output (B, n_classes).

    Stem 3³ convolution at full resolution, then three residual stages that halve the box
    (n → n/2 → n/4 → n/8) while doubling the channels, global average pooling, dropout and the
    linear output layer: 0.9 M parameters instead of Inception3D's 18 M, and batch
    normalisation, so it trains stably from a few hundred subtomograms.
    """

    def __init__(self, n_classes: int, box_voxels: int = 40, dropout: float = 0.2,
                 width: int = 16):
        super().__init__()
        if box_voxels < 8:
            raise TomosiftError(f"ResNet3D needs a box of at least 8 voxels, got {box_voxels}")
        self.stem = nn.Sequential(nn.Conv3d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(
            _ResidualBlock(width, 2 * width, 2),
            _ResidualBlock(2 * width, 4 * width, 2),
            _ResidualBlock(4 * width, 8 * width, 2),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(8 * width, n_classes)

    def hidden_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool3d(self.stages(self.stem(x)), 1), 1)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


def build_model(architecture: str, n_classes: int, box_voxels: int = 40,
                dropout: float | None = None, embedding_dim: int | None = None) -> _Classifier:
    """A freshly initialised model by name (``inception3d``, ``dsrf3d``, ``resnet3d``).

    ``dropout=None`` takes each model's default (Inception3D 0.3, DSRF3D 0, ResNet3D 0.2).
    ``embedding_dim``: add an embedding head of this many dimensions (initialised after the
    rest, so the other weights are those of the model without it).
    """
    if n_classes < 2:
        raise TomosiftError(f"a classifier needs at least 2 classes, got {n_classes}")
    classes = {"inception3d": Inception3D, "dsrf3d": DSRF3D, "resnet3d": ResNet3D}
    if architecture not in classes:
        raise TomosiftError(f"unknown model '{architecture}'; choose one of {ARCHITECTURES}")
    kwargs = {} if dropout is None else {"dropout": dropout}
    model = classes[architecture](n_classes, box_voxels, **kwargs)
    if architecture in ("inception3d", "dsrf3d"):
        model.apply(_keras_initialisation)
    if embedding_dim is not None:
        if embedding_dim < 1:
            raise TomosiftError(f"embedding_dim must be >= 1, got {embedding_dim}")
        model.add_embedding_head(embedding_dim)
    return model


def _keras_initialisation(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as the paper's Keras models were initialised.

    (PyTorch's default, Kaiming-uniform with a = sqrt(5), makes the paper's learning rate of
    0.01 diverge in the first epoch for Inception3D's 786 080-input output layer.)
    """
    if isinstance(module, nn.Conv3d | nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
