"""Integrity through the CLI: ``verify`` finds damaged cache files, opening refuses truncated ones, and search
refuses a cache built by another model, naming both fingerprints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dipair_rerank.cli import main


@pytest.fixture
def index_copy(tiny_index, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_index, tmp_path / "idx"))


def flip_bit(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-8])


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow  # a subprocess
def test_verify_cli_exit_code_on_a_flipped_bit(index_copy):
    """The installed console script, as a user runs it: 0 on the intact copy, 2 once one bit of a shard flips."""
    script = Path(sys.executable).with_name("dipair-rerank")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "dipair_rerank.cli"]
    ok = subprocess.run([*command, "verify", "--index", str(index_copy)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    flip_bit(index_copy / "dipair" / "shard-00001.vectors.npy")
    bad = subprocess.run([*command, "verify", "--index", str(index_copy)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "shard-00001.vectors.npy: checksum mismatch" in bad.stderr


@pytest.mark.parametrize("name, damage, message", [
    ("shard-00000.vectors.npy", flip_bit, "shard-00000.vectors.npy: checksum mismatch"),
    ("shard-00002.lengths.npy", flip_bit, "shard-00002.lengths.npy: checksum mismatch"),
    ("docids.rows.npy", flip_bit, "docids.rows.npy: checksum mismatch"),  # would map docids to the wrong rows
    ("docids.sorted.npy", lambda p: flip_bit(p, -2), "docids.sorted.npy: checksum mismatch"),
    ("shard-00001.vectors.npy", truncate, "shard-00001.vectors.npy is missing or truncated"),
    ("shard-00001.lengths.npy", lambda p: p.unlink(), "shard-00001.lengths.npy is missing or truncated"),
])
def test_verify_finds_damage(index_copy, capsys, name, damage, message):
    damage(index_copy / "dipair" / name)
    assert main(["verify", "--index", str(index_copy)]) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize("damage", [truncate, lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8)])
def test_search_refuses_a_shard_of_the_wrong_size(index_copy, tiny_files, tmp_path, capsys, damage):
    """Never read as data: the size check on open stops the search before any query runs; no run is written."""
    damage(index_copy / "dipair" / "shard-00002.vectors.npy")
    run = tmp_path / "runs" / "r.trec"
    assert main(["search", "--index", str(index_copy), "--topics", str(tiny_files["topics"]), "--run", str(run)]) == 2
    assert "shard-00002.vectors.npy is missing or truncated" in error_line(capsys)
    assert not run.exists() and list(run.parent.glob("*")) == []


def test_search_refuses_another_models_cache_naming_both(tiny_index, tiny_model, tiny_files, tmp_path, capsys):
    from dipair_rerank.model import DiPairModel
    from tests.conftest import tiny_config

    other = DiPairModel(tiny_config(seed=7))
    other_dir = other.save_pretrained(tmp_path / "other")
    run = tmp_path / "r.trec"
    assert main(["search", "--index", str(tiny_index), "--topics", str(tiny_files["topics"]), "--run", str(run),
                 "--model", str(other_dir)]) == 2
    line = error_line(capsys)
    assert tiny_model.fingerprint()[:12] in line and other.fingerprint()[:12] in line
    assert not run.exists()


def test_verify_finds_a_manifest_naming_another_model(index_copy, capsys):
    manifest = index_copy / "manifest.json"
    payload = json.loads(manifest.read_text())
    payload["model_fingerprint"] = "0" * 64
    manifest.write_text(json.dumps(payload))
    assert main(["verify", "--index", str(index_copy)]) == 2
    assert "cache and manifest name different models" in error_line(capsys)


def test_unpublished_index_is_not_an_index(index_copy, capsys):
    """A folder without manifest.json (what a crash before publishing would look like) is refused, not guessed at."""
    (index_copy / "manifest.json").unlink()
    assert main(["verify", "--index", str(index_copy)]) == 2
    assert "missing manifest.json" in error_line(capsys)


def test_damaged_cache_json_is_one_line(index_copy, tiny_files, tmp_path, capsys):
    config = index_copy / "dipair" / "cache.json"
    config.write_text(config.read_text()[:-40])
    assert main(["verify", "--index", str(index_copy)]) == 2
    assert "cache.json is damaged" in error_line(capsys)
    assert main(["search", "--index", str(index_copy), "--topics", str(tiny_files["topics"]), "--run",
                 str(tmp_path / "r.trec")]) == 2
    assert "cache.json is damaged" in error_line(capsys)
