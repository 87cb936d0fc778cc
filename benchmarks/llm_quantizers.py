"""The weight-only quantizers compared by ``llm_weight_only.py``, each run in a child process.

Loaded by file path in the child (``qcompiler.bench.run_child``); it imports only numpy at the top, so a
child's peak memory is its quantizer's. ``build(method, src, dst, bits, block, symmetric, calib)`` writes
``dst`` and returns what the table should say about it.

What each method does with the tied output projection (the export holds the embedding twice: the
``Gather`` table of ``embed_tokens`` and, constant-folded, its transpose as the initializer of the last
``MatMul``, the lm_head, 49152 x 576): every method quantizes every ``MatMul`` with a constant weight,
the lm_head included, with the row's bits and block (NNCF with ``all_layers=True``, which it needs to
treat the first and last layer like the others instead of keeping them at its 8-bit backup precision).
The embedding ``Gather`` stays float32 in onnxruntime's and NNCF's rows (onnxruntime quantizes ``Gather``
only in its DEFAULT method at 4 bits, as ``GatherBlockQuantized``); qcompiler quantizes it with the row's
bits and block (``GatherBlockQuantized``) unless the method ends in :data:`FLOAT_EMBEDDINGS`
(``--exclude Gather``), so its size ratio counts a quantized table and the others a float one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ORT_METHODS = ("ort_default", "ort_rtn", "ort_k_quant", "ort_hqq", "ort_gptq")
FLOAT_ZERO_POINTS = "_fzp"
"""The suffix of a qcompiler method run with float zero points (``--float-zero-points``): ``qc_hqq_fzp``."""
FLOAT_EMBEDDINGS = "_embf"
"""The last suffix of a qcompiler method that keeps the embedding table float (``--exclude Gather``), as
onnxruntime's and NNCF's rows do: ``qc_gptq_fzp_embf``."""
INT8_ACTIVATIONS = "_i8a"
"""The suffix of a qcompiler method whose MatMulNBits quantize their activations to int8 at run time
(``--int8-activations``, ``accuracy_level`` 4): ``qc_rtn_i8a``."""
QC_METHODS = (*(f"qc_{algorithm}{zero}{table}" for table in ("", FLOAT_EMBEDDINGS)
                 for zero in ("", FLOAT_ZERO_POINTS) for algorithm in ("rtn", "hqq", "awq", "gptq")),
              "qc_rtn" + INT8_ACTIVATIONS)
METHODS = (*ORT_METHODS, "nncf_awq", *QC_METHODS)
EXTERNAL_DATA_BYTES = 1 << 30
"""A peer's output larger than this is saved with external data (protobuf cannot hold 2 GB)."""


def calibration_feeds(calib: str) -> list[dict[str, np.ndarray]]:
    feeds = []
    for path in sorted(Path(calib).glob("*.npz")):
        with np.load(path) as data:
            feeds.append({key: data[key] for key in data.files})
    return feeds


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over the calibration feeds (GPTQ deep-copies it and iterates it)."""

    def __init__(self, feeds):
        self.feeds, self.position = feeds, 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.position = 0

    def __iter__(self):
        return iter(self.get_next, None)


def ort(method: str, src: str, dst: str, bits: int, block: int, symmetric: bool, calib: str) -> dict:
    """onnxruntime's ``MatMulNBitsQuantizer`` with one of its algorithm configurations (MatMulNBits)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    configs = {
        "ort_default": lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=bits),
        "ort_rtn": lambda: mnq.RTNWeightOnlyQuantConfig(),
        "ort_k_quant": lambda: mnq.KQuantWeightOnlyQuantConfig(),
        "ort_hqq": lambda: mnq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits),
        "ort_gptq": lambda: mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(calibration_feeds(calib))),
    }
    quantizer = mnq.MatMulNBitsQuantizer(src, bits=bits, block_size=block, is_symmetric=symmetric,
                                         algo_config=configs[method]())
    quantizer.process()
    # past 2 GB (Qwen2.5-Coder-1.5B keeps a float embedding table of 0.9 GB) the output needs external data
    try:
        large = quantizer.model.model.ByteSize() > EXTERNAL_DATA_BYTES
    except Exception:  # noqa: BLE001 - some protobuf builds refuse to size a message past 2 GB
        large = True
    quantizer.model.save_model_to_file(dst, use_external_data_format=large)
    return {}


def nncf_awq(src: str, dst: str, bits: int, block: int, symmetric: bool, calib: str) -> dict:
    """NNCF ``compress_weights``: INT4 with AWQ on the calibration feeds, every linear layer at 4 bits. NNCF needs
    the group size to divide the reduction axis: with ``ADJUST`` a layer it does not divide (SmolLM2's K of 576
    at group 128) gets the largest power of two that does (64), a finer grid than the row's block size. The
    embedding Gather stays float: NNCF 3.4's ONNX backend writes it as a MatMulNBits fed the int64 token ids,
    a model onnxruntime refuses to load."""
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    mode = nncf.CompressWeightsMode.INT4_SYM if symmetric else nncf.CompressWeightsMode.INT4_ASYM
    feeds = calibration_feeds(calib)
    compressed = nncf.compress_weights(onnx.load(src), mode=mode, ratio=1.0, group_size=block, all_layers=True,
                                       awq=True, dataset=nncf.Dataset(feeds), subset_size=len(feeds),
                                       ignored_scope=nncf.IgnoredScope(types=["Gather"]),
                                       advanced_parameters=AdvancedCompressionParameters(
                                           group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
    onnx.save(compressed, dst)
    return {}


def qcompiler_weight_only(method: str, src: str, dst: str, bits: int, block: int, symmetric: bool,
                          calib: str) -> dict:
    """qcompiler's ``weight-only`` pipeline (output as MatMulNBits), with float zero points for a method
    named with :data:`FLOAT_ZERO_POINTS`, the embedding table float for one named with :data:`FLOAT_EMBEDDINGS`,
    int8 activations for one named with :data:`INT8_ACTIVATIONS`."""
    import qcompiler

    int8_activations = method.endswith(INT8_ACTIVATIONS)
    method = method.removesuffix(INT8_ACTIVATIONS)
    float_embeddings = method.endswith(FLOAT_EMBEDDINGS)
    method = method.removesuffix(FLOAT_EMBEDDINGS)
    algorithm = method.removeprefix("qc_").removesuffix(FLOAT_ZERO_POINTS)
    qcompiler.compile(src, dst, pipeline="weight-only", calib=calib if algorithm in ("awq", "gptq") else None,
                      weight_bits=bits, block_size=block, symmetric=symmetric, weight_method=algorithm,
                      weight_format="matmulnbits", float_zero_points=method.endswith(FLOAT_ZERO_POINTS),
                      exclude=["Gather"] if float_embeddings else [], int8_activations=int8_activations)
    return {}


def build(method: str, src: str, dst: str, bits: int, block: int, symmetric: bool, calib: str) -> dict:
    if method in ORT_METHODS:
        return ort(method, src, dst, bits, block, symmetric, calib)
    if method == "nncf_awq":
        return nncf_awq(src, dst, bits, block, symmetric, calib)
    return qcompiler_weight_only(method, src, dst, bits, block, symmetric, calib)
