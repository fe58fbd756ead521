"""Peak memory of ``tomosift extract`` on a large tomogram: memory map against reading it whole.

    python benchmarks/extract_rss.py [--shape 400 1024 1024] [--particles 200] [--dir DIR]

Writes a float32 tomogram of ``--shape`` (z, y, x; default 1024 x 1024 x 400 voxels, 1.6 GB)
chunk-wise through ``mrcfile.new_mmap`` (never held in memory: 16 z planes of seeded noise at a
time), and ``--particles`` random picks (40³ boxes, seeded) as a STAR file; then extracts them
twice, each run in a fresh process: through the memory map (the default) and reading the
tomogram whole first (``memory_map=False``). Prints, per run, the peak resident set size
(``VmHWM`` of the extracting process: anonymous memory plus the file pages it has mapped), the
peak anonymous memory is not separable from it, so the process also reports its resident set
at the end split into anonymous and file pages (``RssAnon``, ``RssFile``), the wall time, and
whether both datasets hold the same bytes. The files are deleted at the end.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from machine import machine_line  # noqa: E402

VOXEL_NM = 0.92
BOX = 40


def write_tomogram(path: Path, shape_zyx, seed: int = 1, planes: int = 16) -> None:
    """A seeded float32 noise tomogram written plane block by plane block (bounded memory)."""
    import mrcfile

    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(path, shape=tuple(shape_zyx), mrc_mode=2, overwrite=True) as mrc:
        for z in range(0, shape_zyx[0], planes):
            stop = min(z + planes, shape_zyx[0])
            mrc.data[z:stop] = rng.standard_normal((stop - z, *shape_zyx[1:]), dtype=np.float32)
        mrc.voxel_size = VOXEL_NM * 10.0
        mrc.update_header_from_data()


def write_picks(path: Path, shape_zyx, count: int, seed: int = 2) -> None:
    from tomosift.tomograms.pick import write_picks as write

    rng = np.random.default_rng(seed)
    size_xyz = np.asarray(shape_zyx[::-1], dtype=np.float64)
    xyz = rng.uniform(BOX, size_xyz - BOX, size=(count, 3))
    write(path, xyz, np.ones(count), shape_zyx, VOXEL_NM, "big", BOX)


def child(tomogram: str, picks: str, out: str, memory_map: bool) -> None:
    """Run one extraction and print its peak memory (JSON on the last line)."""
    from tomosift.tomograms.extract import extract_subtomograms

    start = time.perf_counter()
    summary = extract_subtomograms(tomogram, picks, out, box_voxels=BOX, progress=False,
                                   memory_map=memory_map)
    seconds = time.perf_counter() - start
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            status[key] = int(value.split()[0]) / 1024  # kB -> MB
    print(json.dumps({"seconds": seconds, "extracted": summary.n_extracted, **status}))


def measure(tomogram: Path, picks: Path, out: Path, memory_map: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(tomogram), str(picks), str(out),
               "1" if memory_map else "0"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[400, 1024, 1024],
                        help="z y x voxels (default 400 1024 1024)")
    parser.add_argument("--particles", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    print(machine_line())
    folder = Path(tempfile.mkdtemp(prefix="tomosift_rss_", dir=args.dir))
    try:
        tomogram, picks = folder / "big.mrc", folder / "big.star"
        start = time.perf_counter()
        write_tomogram(tomogram, args.shape)
        write_picks(picks, args.shape, args.particles)
        size_mb = tomogram.stat().st_size / 2**20
        print(f"tomogram {args.shape[2]} x {args.shape[1]} x {args.shape[0]} float32, "
              f"{size_mb:.0f} MB, written in {time.perf_counter() - start:.0f} s; "
              f"{args.particles} picks, {BOX}³ boxes")
        rows = {}
        for name, memory_map in (("memory map", True), ("read whole", False)):
            rows[name] = measure(tomogram, picks, folder / f"{name.split()[0]}.h5", memory_map)
            r = rows[name]
            print(f"  {name}: peak RSS {r['VmHWM']:.0f} MB (at the end: anonymous "
                  f"{r['RssAnon']:.0f} MB, file pages {r['RssFile']:.0f} MB), "
                  f"{r['seconds']:.1f} s, {r['extracted']} subtomograms")
        ratio = rows["read whole"]["VmHWM"] / rows["memory map"]["VmHWM"]
        import h5py

        with h5py.File(folder / "memory.h5") as a, h5py.File(folder / "read.h5") as b:
            same = all(np.array_equal(a[k][()], b[k][()]) for k in a if isinstance(a[k],
                                                                                  h5py.Dataset))
        print(f"peak RSS, read whole / memory map: {ratio:.1f}x; same datasets: {same}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
