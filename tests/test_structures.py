"""Finding, downloading and reading structures, and the errors for bad structure input."""

from __future__ import annotations

import gzip
import http.server
import shutil
import threading
from pathlib import Path

import gemmi
import pytest

from tomosift.errors import TomosiftError
from tomosift.structures import (
    STRUCTURE_DIRS_ENV,
    find_in_dirs,
    find_in_mirror,
    parse_structure_entries,
    read_atomic_model,
    resolve_structure,
    search_dirs,
)


def test_parse_entries_names_and_overrides():
    specs = parse_structure_entries(["1bxn", "data/my_complex.cif.gz",
                                     {"source": "6qt9", "assembly": "none"}])
    assert [s.name for s in specs] == ["1bxn", "my_complex", "6qt9"]
    assert specs[2].assembly == "none"
    with pytest.raises(TomosiftError, match="used twice"):
        parse_structure_entries(["1bxn", "1BXN"])


def test_ids_are_found_case_insensitively_in_env_dirs(tmp_path, monkeypatch, structure_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(structure_path("3hhb"), folder / "3HHB.PDB.gz")
    monkeypatch.setenv(STRUCTURE_DIRS_ENV, f"{tmp_path / 'nothing'}:{folder}")
    assert find_in_dirs("3hhb", search_dirs()) == folder / "3HHB.PDB.gz"
    # config dirs come before the environment's
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(structure_path("3hhb"), first / "3hhb.pdb.gz")
    assert find_in_dirs("3hhb", search_dirs([first])) == first / "3hhb.pdb.gz"


def test_pdb_mirror_layout(tmp_path, structure_path):
    entry = tmp_path / "structures" / "divided" / "pdb" / "hh"
    entry.mkdir(parents=True)
    shutil.copy(structure_path("3hhb"), entry / "pdb3hhb.ent.gz")
    assert find_in_mirror("3HHB", tmp_path) == entry / "pdb3hhb.ent.gz"
    found = resolve_structure("3hhb", [], tmp_path, None, tmp_path / "cache")
    assert found.name == "pdb3hhb.ent.gz"


def test_offline_unknown_id_names_every_place_searched(tmp_path):
    with pytest.raises(TomosiftError) as info:
        resolve_structure("9zzz", [tmp_path / "a", tmp_path / "b"], tmp_path / "mirror", None,
                          tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    for part in ("'9zzz'", str(tmp_path / "a"), str(tmp_path / "b"), "mirror", "cache",
                 "offline"):
        assert part in message


@pytest.fixture
def http_server(tmp_path, structure_path):
    """An HTTP server on 127.0.0.1 serving 3HHB.cif.gz (converted from the shared PDB file)."""
    served = tmp_path / "served"
    served.mkdir()
    structure = gemmi.read_structure(str(structure_path("3hhb")))
    text = structure.make_mmcif_document().as_string()
    with gzip.open(served / "3HHB.cif.gz", "wt") as handle:
        handle.write(text)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_into_cache_then_reuse(tmp_path, http_server):
    cache = tmp_path / "cache"
    path = resolve_structure("3hhb", [], None, http_server, cache)
    assert path == cache / "3hhb.cif.gz"
    model = read_atomic_model(path)
    assert 4000 < len(model.masses_da) < 5000
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files
    # the cached copy is used without any server
    assert resolve_structure("3hhb", [], None, None, cache) == path


def test_download_failure_is_one_line_and_leaves_no_file(tmp_path, http_server):
    cache = tmp_path / "cache"
    with pytest.raises(TomosiftError) as info:
        resolve_structure("1abc", [], None, http_server, cache)
    assert "'1abc'" in str(info.value) and "404" in str(info.value)
    assert "\n" not in str(info.value)
    assert not cache.exists() or not list(cache.iterdir())


def test_first_assembly_and_asymmetric_unit(structure_path):
    assembly = read_atomic_model(structure_path("1bxn"), "first")
    unit = read_atomic_model(structure_path("1bxn"), "none")
    assert len(assembly.masses_da) == 2 * len(unit.masses_da)  # two operators in REMARK 350
    assert assembly.description.startswith("assembly")


def test_multi_model_file_keeps_the_first_model(tmp_path, structure_path):
    structure = gemmi.read_structure(str(structure_path("3hhb")))
    structure.remove_waters()
    second = structure[0].clone()
    second.num = 2
    structure.add_model(second)
    path = tmp_path / "two_models.pdb"
    structure.write_pdb(str(path))
    model = read_atomic_model(path, "none")
    assert "model 1 of 2" in model.description
    assert len(model.masses_da) == structure[0].count_atom_sites()


# -- bad input: one line naming the file and the problem ------------------------------------


def _one_line_error(path, pattern):
    with pytest.raises(TomosiftError) as info:
        read_atomic_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert pattern in message
    return message


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nope.pdb", "file not found")


def test_text_file_is_not_a_structure(tmp_path):
    path = tmp_path / "notes.pdb"
    path.write_text("these are my notes, not coordinates\n")
    _one_line_error(path, "no atoms")


def test_truncated_pdb(tmp_path, structure_path):
    text = gzip.open(structure_path("3hhb"), "rt").read()
    cut = text.index("ATOM   3122")
    path = tmp_path / "cut.pdb"
    path.write_text(text[: cut + 58])  # stops inside the occupancy column
    _one_line_error(path, "truncated")


def test_truncated_gzip(tmp_path, structure_path):
    data = Path(structure_path("3hhb")).read_bytes()
    path = tmp_path / "cut.pdb.gz"
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, "")


def test_empty_mmcif(tmp_path):
    path = tmp_path / "empty.cif"
    path.write_text("")
    _one_line_error(path, "not a readable PDB/mmCIF structure")
    path.write_text("data_empty\n")
    _one_line_error(path, "no atoms")


def test_model_without_atoms(tmp_path, structure_path):
    lines = gzip.open(structure_path("3hhb"), "rt").read().splitlines()
    path = tmp_path / "header_only.pdb"
    path.write_text("\n".join(line for line in lines
                              if not line.startswith(("ATOM", "HETATM"))) + "\n")
    _one_line_error(path, "no atoms")
