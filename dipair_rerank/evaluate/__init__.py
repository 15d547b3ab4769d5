"""Quality (ir_measures), latency accounting and reports."""

from dipair_rerank.evaluate.latency import StageTimer, load_latency
from dipair_rerank.evaluate.metrics import DEFAULT_MEASURES, MeasureValue, evaluate
from dipair_rerank.evaluate.report import format_latency, format_measures, format_table

__all__ = [
    "DEFAULT_MEASURES",
    "MeasureValue",
    "StageTimer",
    "evaluate",
    "format_latency",
    "format_measures",
    "format_table",
    "load_latency",
]
