"""Defaults shared by the CLI and the API (import-light: the CLI reads them before any heavy import)."""

DEFAULT_MEASURES = "nDCG@10 RR@10 R@100"
DEFAULT_COLLECTION = "irds:beir/scifact/test"
