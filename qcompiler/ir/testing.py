"""Helpers for tests: models from ONNX text, onnxruntime runs, random feeds."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import onnx.parser

from ._core import Model
from .serde import from_proto, to_proto


def parse(text: str) -> Model:
    """A model from ONNX text syntax (``onnx.parser``), checked by ``onnx.checker``."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    return from_proto(proto, where="<text>")


def tensor_text(name: str, array: np.ndarray) -> str:
    """An initializer in ONNX text syntax, e.g. ``float[2,2] w = {1.0, 2.0, 3.0, 4.0}``.

    For writing test graphs with real (e.g. random) weights inside the text itself. Floats are printed
    with ``repr`` so the values round-trip exactly.
    """
    array = np.asarray(array)
    elem = onnx.helper.tensor_dtype_to_string(onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
    elem = elem.removeprefix("TensorProto.").lower()
    dims = ",".join(map(str, array.shape))
    values = ", ".join(repr(v) for v in array.ravel().tolist())
    return f"{elem}[{dims}] {name} = {{{values}}}"


def random_feeds(model: Model, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input; symbolic dims take ``dims[name]`` or 2."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = tuple(d if isinstance(d, int) else (dims or {}).get(d, 2) for d in value.shape or ())
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.dtype)
        # np.asarray: for rank-0 inputs numpy returns scalars, which onnxruntime does not accept
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = np.asarray(rng.standard_normal(shape), dtype=dtype)
        elif dtype == np.bool_:
            feeds[value.name] = np.asarray(rng.random(shape) > 0.5)
        else:
            feeds[value.name] = np.asarray(rng.integers(0, 4, shape), dtype=dtype)
    return feeds


def run_onnxruntime(model: Model | onnx.ModelProto, feeds: dict[str, np.ndarray],
                    optimize: bool = False) -> list[np.ndarray]:
    """Outputs of an onnxruntime CPU session (graph optimizations off unless ``optimize``)."""
    import onnxruntime as ort

    proto = to_proto(model) if isinstance(model, Model) else model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def x86_cpu_flags() -> set[str]:
    """The CPU flags ``/proc/cpuinfo`` lists on x86-64 Linux (empty elsewhere): what tests check their
    expectations about the runtime's kernels against (the library itself probes the runtime instead)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())
