"""onnxruntime sessions as ``qcompiler bench`` configures them.

Loaded by file path in the memory-measuring child process (see :mod:`qcompiler.bench.memory`), so it
imports nothing of qcompiler: the child's memory is onnxruntime's and the model's.
"""

from __future__ import annotations

import numpy as np


def open_session(model: bytes | str, threads: int):
    """A CPU session with ``threads`` intra-op threads (0: onnxruntime's default, one per physical core), one
    inter-op thread, all graph optimizations: how every latency qcompiler measures is taken."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initializers and the like
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_once(model: str, feed_npz: str, threads: int) -> None:
    """Load ``model`` and run it once on the feed saved in ``feed_npz`` (the measured work)."""
    session = open_session(model, threads)
    with np.load(feed_npz) as data:
        feed = {key: data[key] for key in data.files}
    session.run(None, feed)
