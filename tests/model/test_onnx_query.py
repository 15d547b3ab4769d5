import logging
import sys

import torch

from dipair_rerank.model import DiPairModel
from dipair_rerank.model.onnx_query import ContentionSwitch, OnnxQueryEncoder, int8_available
from tests.conftest import tiny_config


def test_importing_the_weight_quantizer_leaves_the_root_logger_alone(monkeypatch):
    """ONNX Runtime's quantiser module calls logging.basicConfig(level=INFO) on import."""
    monkeypatch.delitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (basicConfig does nothing once there are any)
    level = root.level
    assert int8_available()
    assert root.handlers == [] and root.level == level


def test_the_switch_sends_lone_queries_to_one_thread_while_their_worker_waits_for_a_core():
    switch = ContentionSwitch(threads=2, window=3, hold=4)
    for cpu in (1.9, 1.9, 1.0):  # one call whose worker waited, among three: not enough
        switch.observe(cpu, 1.0)
    assert switch.parallel(0.0, 0.0) and switch.switches == 0
    switch.observe(0.004, 0.004)  # two of the last three ran on one core's worth of CPU
    assert switch.switches == 1
    assert [switch.parallel(0.0, 0.0) for _ in range(5)] == [False] * 4 + [True]  # one thread for `hold` calls
    for _ in range(3):
        switch.observe(1.9, 1.0)  # contention over
    assert switch.parallel(0.0, 0.0) and switch.switches == 1


def test_a_lone_query_after_parallel_work_elsewhere_in_the_process_runs_on_one_thread():
    """A torch cross-encoder call between two DiPair calls leaves its OpenMP workers spinning on the cores."""
    switch = ContentionSwitch(threads=2)
    switch.ended(cpu=10.0, wall=100.0)
    assert not switch.parallel(cpu=13.8, wall=102.0)  # 1.9 cores busy over the two seconds since
    switch.ended(cpu=13.8, wall=102.0)
    assert switch.parallel(cpu=14.8, wall=103.0)  # one core's worth: the caller's own thread
    switch.ended(cpu=14.8, wall=103.0)
    assert switch.parallel(cpu=14.8, wall=163.0)  # a service idle between requests
    switch.ended(cpu=14.8, wall=163.0)
    assert switch.parallel(cpu=14.8015, wall=163.0005)  # too short a gap to judge
    assert switch.parallel(cpu=20.0, wall=164.0)  # no call ended since: nothing to judge
    assert switch.after_busy_gaps == 1 and switch.switches == 0


def test_a_lone_query_encodes_alike_on_one_thread_and_on_two():
    model = DiPairModel(tiny_config(seed=2)).eval()
    encoder = OnnxQueryEncoder(model, threads=2)
    batch = model.tokenize(["what is a qubit"], max_length=model.config.query_max_length)
    parallel = encoder(batch)
    encoder.switch._left = 1  # as after slow calls
    alone = encoder(batch)
    assert encoder.switch.parallel(0.0, 0.0)  # the one call was spent
    for a, b in zip(parallel[:3], alone[:3]):  # the lexical field is None for a model without that channel
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    assert OnnxQueryEncoder(model, threads=1).switch is None  # nothing to switch between


class _CountingSession:
    def __init__(self, session, calls: list[str], name: str):
        self.session, self.calls, self.name = session, calls, name

    def run(self, *args):
        self.calls.append(self.name)
        return self.session.run(*args)


def test_several_length_groups_run_as_one_thread_tasks_and_a_lone_query_keeps_its_threads():
    model = DiPairModel(tiny_config(seed=2)).eval()
    encoder = OnnxQueryEncoder(model, threads=2, batch_threads=2)
    calls: list[str] = []
    encoder.session = _CountingSession(encoder.session, calls, "two threads")
    encoder.single_session = _CountingSession(encoder.single_session, calls, "one thread")
    lone = model.tokenize(["what is a qubit"], max_length=32)
    long = model.tokenize(["what is a qubit made of in a superconducting quantum computer"], max_length=32)
    assert encoder.runs_tasks
    encoder.encode_many([lone])
    assert calls == ["two threads"]  # a single batch is a plain call: the switch chooses its threads
    calls.clear()
    many = encoder.encode_many([lone, long])
    assert calls == ["one thread", "one thread"]
    for got, batch in zip(many, (lone, long)):  # in order, as if encoded one by one
        assert torch.allclose(got.vectors, encoder(batch).vectors, atol=1e-5)
    assert not OnnxQueryEncoder(model, threads=2, batch_threads=1).runs_tasks
