"""Where the shared evaluation collections live (one setting, overridable by users elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "DIPAIR_DATA"
DEFAULT_DATA = "../shared/data"


def shared_data_dir() -> Path:
    """The folder holding scifact/, msmarco-dl19/, ...: ``$DIPAIR_DATA``, else ``../shared/data``."""
    return Path(os.environ.get(DATA_ENV, DEFAULT_DATA))
