"""The local executor of the sensitivity analysis: results in order, at most ``workers`` items at once, errors
raised in the caller, and rewrites on its threads that leave the global garbage collector alone."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

from qcompiler.lowering import _collector_paused
from qcompiler.scaleout import ThreadExecutor
from qcompiler.sensitivity import run_session


def test_results_follow_the_items_and_run_off_the_main_thread():
    seen: list[int] = []

    def work(offset: int, item: int) -> int:
        seen.append(threading.get_ident())
        return item + offset

    assert ThreadExecutor(2).map(work, list(range(7)), 10) == list(range(10, 17))
    assert threading.main_thread().ident not in seen and len(seen) == 7


def test_at_most_workers_items_run_at_once():
    running, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def work(_, item: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(0.05)
        with lock:
            running[0] -= 1
        return item

    assert ThreadExecutor(3).map(work, list(range(9))) == list(range(9))
    assert peak[0] <= 3


def test_an_item_that_fails_raises_in_the_caller():
    def work(_, item: int) -> int:
        if item == 2:
            raise ValueError("item 2")
        return item

    with pytest.raises(ValueError, match="item 2"):
        ThreadExecutor(2).map(work, list(range(5)))


def test_rewrites_on_worker_threads_leave_the_collector_on():
    """The collector switch is global: a worker thread that turned it off would turn it off under every other
    thread too, and the discarded trial models of a sensitivity search then piled up."""
    inside: list[bool] = []

    def rewrite() -> None:
        with _collector_paused():
            inside.append(gc.isenabled())

    thread = threading.Thread(target=rewrite)
    thread.start()
    thread.join()
    assert inside == [True] and gc.isenabled()
    with _collector_paused():
        assert not gc.isenabled()  # the main thread's rewrite pauses it
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_session_outputs_own_their_memory():
    """An array onnxruntime returns is a view on its session's arena and keeps the arena alive; the
    sensitivity analysis holds a batch of configurations' outputs at once, so it keeps copies."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (outputs,) = run_session(model, [{"x": x}])
    assert outputs[0].flags.owndata and np.array_equal(outputs[0], 2 * x)
