"""tomosift: sort cryo-electron subtomograms into structurally homogeneous subsets.

A reimplementation and extension of Xu et al. 2017 (Bioinformatics 33, i13-i22),
"Deep learning-based subdivision approach for large scale macromolecules structure
recovery from electron cryo tomograms".
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tomosift")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["__version__"]
