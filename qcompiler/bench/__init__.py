"""Benchmarking ONNX models with onnxruntime: latency, throughput, size, peak memory, output agreement.

``bench(models, inputs=..., calib=..., threads=..., runs=...)`` returns a JSON-ready dict and
``format_table(result)`` prints it; ``run_child`` measures the peak memory of work done in a separate
process (also used by the side-by-side benchmarks in ``benchmarks/``).
"""

from .memory import ChildError, ChildRun, run_child
from .report import format_table, machine, machine_label
from .run import bench

__all__ = ["ChildError", "ChildRun", "bench", "format_table", "machine", "machine_label", "run_child"]
