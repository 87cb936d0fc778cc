"""onnxruntime sessions as ``qcompiler bench`` configures them.

Loaded by file path in the memory-measuring child process (see :mod:`qcompiler.bench.memory`), so it
imports nothing of qcompiler: the child's memory is onnxruntime's and the model's.
"""

from __future__ import annotations

import numpy as np


def open_session(model: bytes | str, threads: int):
    """A CPU session with ``threads`` intra-op threads (0: onnxruntime's default, one per physical core), one
    inter-op thread, all graph optimizations: how every latency qcompiler measures is taken.

    Its worker threads spin between the parallel sections of a run, as onnxruntime's are by default, but
    stop spinning when the run returns (``session.force_spinning_stop``): two sessions measured in
    alternation in one process (a paired comparison, ``qcompiler bench``'s rounds) otherwise run while the
    other's workers still spin on the same cores, which a deployed model, alone in its process, never sees.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initializers and the like
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_once(model: str, feed_npz: str, threads: int) -> None:
    """Load ``model`` and run it once on the feed saved in ``feed_npz`` (the measured work)."""
    session = open_session(model, threads)
    with np.load(feed_npz) as data:
        feed = {key: data[key] for key in data.files}
    session.run(None, feed)
