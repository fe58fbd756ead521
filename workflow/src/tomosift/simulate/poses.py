"""Random particle poses and the random streams of each particle.

Every particle draws from its own generators, keyed by the master seed and the particle's
index in the dataset, never by the shard that simulates it: a dataset is the same bytes
whether one job or a hundred make it.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy.spatial.transform import Rotation

POSE_STREAM = 0
NOISE_STREAM = 1


def dataset_key(noise_level: float, tilt_max_deg: float, noise_model: str = "snr") -> int:
    """A stable 32-bit key of a (noise level, tilt range) grid point; the noise level is an
    SNR or, for the ``dose`` model, a dose."""
    return zlib.crc32(f"{noise_model}={noise_level:g};tilt={tilt_max_deg:g}".encode())


def pose_rng(seed: int, index: int) -> np.random.Generator:
    """Generator for the pose of particle ``index`` (shared by all grid points of a config)."""
    return np.random.default_rng([seed, POSE_STREAM, index])


def noise_rng(seed: int, key: int, index: int) -> np.random.Generator:
    """Generator for the noise of particle ``index`` in the dataset with ``key``."""
    return np.random.default_rng([seed, NOISE_STREAM, key, index])


def random_pose(rng: np.random.Generator, max_shift_voxels: float) -> tuple[np.ndarray, np.ndarray]:
    """A rotation uniform on SO(3) and a shift uniform in [-max, max] voxels per axis.

    Returns:
        (rotation (3, 3) acting on x, y, z column vectors, shift (3,) x, y, z in voxels).
    """
    rotation = Rotation.random(random_state=rng).as_matrix()
    shift = rng.uniform(-max_shift_voxels, max_shift_voxels, size=3)
    return rotation, shift
