"""The model file: tensors and a JSON header, safe to load from anyone.

A model file is a ``torch.save`` of ``{"format", "header", "tensors"}``: the header is a JSON
string (method, architecture, class names, box, settings, training history, the dataset it was
trained on, tomosift version), the tensors are the CNN's weights or the RIF-SVM's arrays, and
for a CNN trained on data with true poses ``class_averages``, one 20³ map per training class
(:mod:`tomosift.classify.class_averages`; the header's ``class_averages`` gives their voxel
size; files without them load as before). It is loaded with ``torch.load(...,
weights_only=True)``, which unpickles tensors and plain containers only, so a shared model
file cannot run code (a pickled Python object, which the files of tomosift 0.1 held, is
refused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from tomosift import __version__
from tomosift.errors import TomosiftError
from tomosift.io import atomic_path

MODEL_FORMAT = "tomosift-model-2"
#: The tensor of the class averages (not a weight of the network).
CLASS_AVERAGES_TENSOR = "class_averages"


def save_model(path: str | os.PathLike, header: dict,
               tensors: dict[str, torch.Tensor | np.ndarray]) -> None:
    """Write a model file atomically (see the module docstring)."""
    payload = {
        "format": MODEL_FORMAT,
        "header": json.dumps({"tomosift_version": __version__, **header}, sort_keys=True),
        "tensors": {name: torch.as_tensor(np.asarray(value) if isinstance(value, np.ndarray)
                                          else value).detach().cpu().contiguous()
                    for name, value in tensors.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | os.PathLike) -> dict:
    """The header of a model file with its tensors under ``tensors`` (a CNN's also under
    ``state_dict``, without the class averages; the RIF-SVM's as ``classifier`` and
    ``rif_settings``)."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TomosiftError(f"{path}: not a tomosift model file, or one that holds Python "
                            f"objects, which are not loaded ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise TomosiftError(f"{path}: not a tomosift model file (format {MODEL_FORMAT})")
    header = json.loads(payload["header"])
    tensors = payload["tensors"]
    weights = {name: value for name, value in tensors.items() if name != CLASS_AVERAGES_TENSOR}
    model = {**header, "tensors": tensors}
    if header["method"] == "rif-svm":
        from tomosift.classify.rif import RifSettings, SvmArrays

        model["classifier"] = SvmArrays.from_arrays(
            {name: tensor.numpy() for name, tensor in weights.items()})
        model["rif_settings"] = RifSettings(**header["rif_settings"])
    else:
        model["state_dict"] = weights
    return model
