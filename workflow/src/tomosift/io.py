"""File output that never leaves a half-written file, and MRC input/output.

Every writer in tomosift writes to a temporary name in the destination folder and renames it
into place, so an interrupted run leaves either the old file or the new one, never a fragment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import mrcfile
import numpy as np

from tomosift import __version__
from tomosift.errors import TomosiftError

ANGSTROM_PER_NM = 10.0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the file's suffixes (some libraries choose a format by suffix).
    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(final.suffixes)
    _remove_stale_temporaries(final, suffixes)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.tmp{suffixes}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_stale_temporaries(final: Path, suffixes: str) -> None:
    """Delete temporaries of ``final`` left by killed processes (a SIGKILL skips cleanup)."""
    for leftover in final.parent.glob(f".{final.stem}.*.tmp{suffixes}"):
        pid_text = leftover.name[len(final.stem) + 2 :].split(".", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def listed_files(entries: Sequence[str | os.PathLike], accept: Callable[[Path], bool],
                 kind: str) -> list[Path]:
    """Files of a list of files and folders: a file as it is, a folder as its ``accept``-ed
    files (sorted); a missing entry or a folder with none is refused in one line naming it
    (``kind``: what the folder should hold)."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and accept(p))
            if not found:
                raise TomosiftError(f"{path}: the folder holds no {kind}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise TomosiftError(f"{path}: file not found")
    return files


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_mrc(path: str | os.PathLike, volume: np.ndarray, voxel_size_nm: float,
              labels: Sequence[str] = ()) -> None:
    """Write a 3D volume as MRC (mode 2, float32), atomically.

    Args:
        path: destination file.
        volume: array of shape (nz, ny, nx), indexed [z, y, x] as MRC sections/rows/columns.
        voxel_size_nm: voxel edge in nm; the header stores it in Å as the MRC convention asks.
        labels: further header labels (ASCII, at most 80 characters and 9 labels), after
            the first ``tomosift <version>`` (e.g. a tomogram's CTF, read back by
            :func:`mrc_labels`).

    The header label is fixed (no time stamp) so that the same volume gives the same bytes.
    """
    data = np.ascontiguousarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise TomosiftError(f"{path}: expected a 3D volume, got shape {data.shape}")
    texts = [f"tomosift {__version__}", *labels]
    if len(texts) > 10 or any(len(t.encode()) > 80 or not t.isascii() for t in texts):
        raise TomosiftError(f"{path}: MRC labels must be at most 9 ASCII lines of 80 characters")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = voxel_size_nm * ANGSTROM_PER_NM
            for index, text in enumerate(texts):
                mrc.header.label[index] = text.encode()
            mrc.header.nlabl = len(texts)
            mrc.update_header_stats()


def mrc_labels(path: str | os.PathLike) -> list[str]:
    """The text labels of an MRC file's header (the first ``nlabl``), without its data."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            count = min(max(int(mrc.header.nlabl), 0), 10)
            raw = [bytes(mrc.header.label[i]) for i in range(count)]
    except Exception as exc:
        raise TomosiftError(f"{path}: not a readable MRC map ({_first_line(exc)})") from exc
    return [r.rstrip(b"\x00 ").decode("ascii", errors="replace") for r in raw]


def read_mrc(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read an MRC map.

    Returns:
        (volume, voxel_size_nm): the data as float32 of shape (nz, ny, nx), indexed [z, y, x],
        and the voxel edge in nm taken from the header (which stores Å).

    Raises:
        TomosiftError: missing or unreadable file, non-3D data, non-cubic voxels, or a zero
            or missing voxel size.
    """
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise TomosiftError(f"{path}: not a readable MRC map (no data block)")
            data = np.array(mrc.data, dtype=np.float32)
            axis_order = (int(mrc.header.maps), int(mrc.header.mapr), int(mrc.header.mapc))
            voxel = mrc.voxel_size
            voxel_xyz_angstrom = (float(voxel.x), float(voxel.y), float(voxel.z))
    except TomosiftError:
        raise
    except Exception as exc:  # mrcfile raises ValueError, OSError, EOFError ...
        raise TomosiftError(f"{path}: not a readable MRC map ({_first_line(exc)})") from exc
    if data.ndim != 3:
        raise TomosiftError(f"{path}: expected a 3D map, got data of shape {data.shape}")
    if sorted(axis_order) == [1, 2, 3] and axis_order != (3, 2, 1):
        # Files whose sections are not z (MAPC/MAPR/MAPS not 1/2/3): bring data to [z, y, x].
        data = np.ascontiguousarray(np.transpose(data, [axis_order.index(a) for a in (3, 2, 1)]))
    voxel_nm = _checked_voxel_size_nm(path, voxel_xyz_angstrom)
    if not np.all(np.isfinite(data)):
        raise TomosiftError(f"{path}: the map contains NaN or infinite values")
    return data, voxel_nm


@contextlib.contextmanager
def mrc_memmap(path: str | os.PathLike) -> Iterator[tuple[np.ndarray, float]]:
    """An MRC map's data as a read-only memory map, without reading it: (volume [z, y, x]
    in the file's own data type (a transposed view for files whose sections are not z),
    voxel size in nm), valid inside the ``with`` block. Pages are read from disk as slices
    are taken, so cutting boxes out of a large tomogram needs little memory; the caller
    converts the slices it takes (and checks them for NaN, which :func:`read_mrc` does on the
    whole map). Errors as :func:`read_mrc`.
    """
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except Exception as exc:
        raise TomosiftError(f"{path}: not a readable MRC map ({_first_line(exc)})") from exc
    with mrc:
        if mrc.data is None:
            raise TomosiftError(f"{path}: not a readable MRC map (no data block)")
        data = mrc.data
        if data.ndim != 3:
            raise TomosiftError(f"{path}: expected a 3D map, got data of shape {data.shape}")
        axis_order = (int(mrc.header.maps), int(mrc.header.mapr), int(mrc.header.mapc))
        if sorted(axis_order) == [1, 2, 3] and axis_order != (3, 2, 1):
            data = np.transpose(data, [axis_order.index(a) for a in (3, 2, 1)])
        voxel = mrc.voxel_size
        voxel_nm = _checked_voxel_size_nm(path, (float(voxel.x), float(voxel.y),
                                                 float(voxel.z)))
        yield data, voxel_nm


def release_pages(array: np.ndarray) -> None:
    """Unmap the pages a memory-mapped array (or a view of one) has read from its file, so
    that they stop counting in this process's resident set (the kernel's page cache keeps
    them; later reads map them again). A no-op for arrays in memory or where ``madvise`` is
    missing. Why: every page fault on a file mapping maps its neighbours too (64 kB
    "fault-around" on Linux), so cutting a 40³ box maps about 80 MB of a large tomogram, and
    200 boxes would map most of the file (``benchmarks/extract_rss.py``)."""
    import mmap

    base = array
    while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        base._mmap.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed or not allowed: the pages stay mapped
        pass


def _checked_voxel_size_nm(path: Path, voxel_xyz_angstrom: tuple[float, float, float]) -> float:
    if not all(np.isfinite(v) and v > 0 for v in voxel_xyz_angstrom):
        raise TomosiftError(
            f"{path}: the header's voxel size is zero or missing ({voxel_xyz_angstrom} Å); "
            "set it (e.g. with mrcfile or relion_image_handler --angpix) and try again"
        )
    if max(voxel_xyz_angstrom) - min(voxel_xyz_angstrom) > 1e-3 * max(voxel_xyz_angstrom):
        raise TomosiftError(f"{path}: voxels are not cubic ({voxel_xyz_angstrom} Å)")
    return voxel_xyz_angstrom[0] / ANGSTROM_PER_NM


def mrc_voxel_size_nm(path: str | os.PathLike) -> float:
    """The voxel edge (nm) in an MRC file's header, without reading its data (the checks and
    messages of :func:`read_mrc`)."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            voxel = mrc.voxel_size
            voxel_xyz_angstrom = (float(voxel.x), float(voxel.y), float(voxel.z))
    except Exception as exc:
        raise TomosiftError(f"{path}: not a readable MRC map ({_first_line(exc)})") from exc
    return _checked_voxel_size_nm(path, voxel_xyz_angstrom)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def relion_optics(voxel_size_nm: float, box_voxels: int):
    """The RELION optics block of 3D subtomograms: one optics group at this voxel size."""
    import pandas as pd

    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                         "rlnImagePixelSize": [voxel_size_nm * ANGSTROM_PER_NM],
                         "rlnImageSize": [int(box_voxels)], "rlnImageDimensionality": [3]})


def write_star(path: str | os.PathLike, blocks: dict) -> None:
    """Write STAR data blocks (name -> DataFrame) with the ``starfile`` package, atomically.

    starfile heads its files with the time of writing; that line is replaced by a fixed one so
    that the same tables give the same bytes.
    """
    import starfile

    lines = starfile.to_string(blocks).splitlines()
    lines = [f"# written by tomosift {__version__}" if line.startswith("# Created by") else line
             for line in lines]
    write_text(path, "\n".join(lines) + "\n")
