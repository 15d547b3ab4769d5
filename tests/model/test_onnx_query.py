import logging
import sys

from dipair_rerank.model.onnx_query import int8_available


def test_importing_the_weight_quantizer_leaves_the_root_logger_alone(monkeypatch):
    """ONNX Runtime's quantiser module calls logging.basicConfig(level=INFO) on import."""
    monkeypatch.delitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (basicConfig does nothing once there are any)
    level = root.level
    assert int8_available()
    assert root.handlers == [] and root.level == level
