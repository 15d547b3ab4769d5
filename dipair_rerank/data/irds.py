"""ir_datasets ids written ``irds:<id>``, usable offline from a seeded source folder.

ir_datasets writes derived files next to its source files, so a read-only copy (``../shared/ir_datasets``)
cannot serve as ``IR_DATASETS_HOME`` directly. ``load_dataset`` links any source file found under
``$DIPAIR_IRDS_SOURCES`` (default ``../shared/ir_datasets``) into the writable ir_datasets home first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
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


class _QuietIrdsLog(logging.Filter):
    """ir_datasets logs INFO to its own stderr handler whatever our verbosity: without ``-v`` keep only its
    warnings, drop its download-retry notes (our one-line error repeats the failure) and hold data usage notices
    until the data was actually read (offline, a failure is then one line)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.INFO):
            return True
        message = record.getMessage()
        if "agree" in message:
            self.held.append(message)
            return False
        return record.levelno >= logging.WARNING and not message.startswith("Download failed")

    def release(self) -> None:
        for message in self.held:
            logger.warning("ir_datasets: %s", message)
        self.held.clear()


_FILTER = _QuietIrdsLog()


def _quiet_irds_log() -> None:
    irds_logger = logging.getLogger("ir_datasets")  # ir_datasets.log.easy() logs everything under this name
    if _FILTER not in irds_logger.filters:
        irds_logger.addFilter(_FILTER)


def _failure(spec: str, what: str, exc: Exception) -> DiPairError:
    _FILTER.held.clear()
    first = (str(exc).splitlines() or [""])[0][:200]
    return DiPairError(
        f"could not read {what} of {spec} ({type(exc).__name__}: {first}); "
        f"offline, put its source file under ${SOURCES_ENV} or IR_DATASETS_HOME"
    )


def fetch(spec: str, what: str, it_factory: Any) -> Any:
    """Run ``it_factory()`` and turn ir_datasets' download failures into one clear line."""
    _quiet_irds_log()
    try:
        result = it_factory()
    except DiPairError:
        raise
    except Exception as exc:  # ir_datasets raises plain exceptions on failed downloads
        raise _failure(spec, what, exc) from exc
    _FILTER.release()
    return result


def guarded_iter(spec: str, what: str, items: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``items`` (ir_datasets downloads lazily, on the first ``next``), failures as one clear line."""
    _quiet_irds_log()
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except DiPairError:
            raise
        except Exception as exc:
            raise _failure(spec, what, exc) from exc
        _FILTER.release()
        yield item
