"""ir_datasets ids written ``irds:<id>``, usable offline from a seeded source folder.

ir_datasets writes derived files next to its source files, so a read-only copy (``../shared/ir_datasets``)
cannot serve as ``IR_DATASETS_HOME`` directly. ``load_dataset`` links any source file found under
``$DIPAIR_IRDS_SOURCES`` (default ``../shared/ir_datasets``) into the writable ir_datasets home first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

PREFIX = "irds:"
SOURCES_ENV = "DIPAIR_IRDS_SOURCES"
DEFAULT_SOURCES = "../shared/ir_datasets"


def is_irds(spec: str | os.PathLike[str]) -> bool:
    return str(spec).startswith(PREFIX)


def irds_home() -> Path:
    return Path(os.environ.get("IR_DATASETS_HOME", Path.home() / ".ir_datasets"))


def seed_sources() -> None:
    """Symlink offline source files into the ir_datasets home where they are missing."""
    sources = Path(os.environ.get(SOURCES_ENV, DEFAULT_SOURCES))
    if not sources.is_dir():
        return
    home = irds_home()
    for source in sources.rglob("*"):
        if not source.is_file() or source.suffix == ".md":
            continue
        target = home / source.relative_to(sources)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
            logger.info("linked %s -> %s", target, source)


def load_dataset(spec: str) -> Any:
    """The ir_datasets dataset for ``irds:<id>`` (raises DiPairError for an unknown id)."""
    dataset_id = spec[len(PREFIX):] if is_irds(spec) else spec
    seed_sources()
    import ir_datasets

    try:
        return ir_datasets.load(dataset_id)
    except KeyError as exc:
        raise DiPairError(f"unknown ir_datasets id {dataset_id!r}") from exc


def fetch(spec: str, what: str, it_factory: Any) -> Any:
    """Run ``it_factory()`` and turn ir_datasets' download failures into one clear line."""
    try:
        return it_factory()
    except DiPairError:
        raise
    except Exception as exc:  # ir_datasets raises plain exceptions on failed downloads
        raise DiPairError(
            f"could not read {what} of {spec} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"offline, put its source file under ${SOURCES_ENV} or IR_DATASETS_HOME"
        ) from exc
