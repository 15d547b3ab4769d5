"""One folder per index: ``manifest.json``, ``lucene/``, optional ``faiss/``, and ``dipair/`` (the cache).

An index built from an existing Lucene index (``index --from-lucene``) records that index's path in the manifest
and BM25 searches it there (``lucene/`` is then only a link to it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dipair_rerank.errors import DiPairError

MANIFEST = "manifest.json"
EXTERNAL_LUCENE = "lucene_path"  # manifest key: the existing Lucene index an index was built from


@dataclass(frozen=True)
class IndexIdentity:
    """Which build of an index a folder holds: ``build``, the manifest's sha256 (what was built: corpus, model,
    versions, build time), and the folder itself (device, inode): publishing renames a new folder into place, so
    even a rebuild with an identical manifest is a different folder. ``published``: the manifest's mtime (UTC)."""

    build: str
    folder: tuple[int, int]
    published: str

    def describe(self) -> dict[str, str]:
        return {"build": self.build, "published": self.published}


@dataclass(frozen=True)
class IndexLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def lucene(self) -> Path:
        """The BM25 index: the one recorded in the manifest, else ``lucene/`` inside the folder."""
        if self.manifest_path.is_file():
            recorded = self.manifest().get(EXTERNAL_LUCENE)
            if recorded:
                return Path(recorded)
        return self.root / "lucene"

    @property
    def faiss(self) -> Path:
        return self.root / "faiss"

    @property
    def cache(self) -> Path:
        return self.root / "dipair"

    def manifest(self) -> dict[str, Any]:
        """The manifest of a complete index (an index without one was never published)."""
        if not self.manifest_path.is_file():
            raise DiPairError(f"no index at {self.root} (missing {MANIFEST}); build it with 'dipair-rerank index'")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DiPairError(f"{self.manifest_path} is damaged ({exc}); rebuild the index with 'dipair-rerank index'"
                              ) from exc
        if not isinstance(manifest, dict):
            raise DiPairError(f"{self.manifest_path} is damaged (not a JSON object); rebuild the index")
        return manifest

    def identity(self) -> IndexIdentity:
        """The build this folder holds now (read the manifest's bytes and the folder's inode: cheap)."""
        try:  # the manifest read through the folder opened: both of one build, even while another is published
            folder_fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise DiPairError(f"no index at {self.root}; build it with 'dipair-rerank index'") from exc
        try:
            folder = os.fstat(folder_fd)
            manifest_fd = os.open(MANIFEST, os.O_RDONLY, dir_fd=folder_fd)
            with open(manifest_fd, "rb") as handle:
                data = handle.read()
                mtime = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError as exc:
            raise DiPairError(f"no index at {self.root} (missing {MANIFEST}); build it with 'dipair-rerank index'"
                              ) from exc
        finally:
            os.close(folder_fd)
        published = datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
        return IndexIdentity(hashlib.sha256(data).hexdigest()[:16], (folder.st_dev, folder.st_ino), published)

    def has_dense(self) -> bool:
        return (self.faiss / "index").is_file()
