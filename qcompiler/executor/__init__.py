"""The integer reference executor: run any model qcompiler reads or writes as the target CPU would.

::

    from qcompiler.executor import Interpreter
    outputs = Interpreter("model.int8.onnx", profile="x86-avx2").run({"x": x})

* :mod:`.interpreter` — :class:`Interpreter` (planned once, node by node, values freed after last use)
* :mod:`.profiles` — numerics profiles by target: ``simulate``, ``exact``, ``x86-avx2``, ``x86-vnni``, ``arm64``
* :mod:`.fusion` — onnxruntime's QDQ fusions, found in the IR
* :mod:`.fallback` — ``onnx.reference`` for nodes without a kernel of ours
* :mod:`.observers` — :class:`RangeObserver`, :class:`CompareInterpreter`
* :mod:`.agreement` — outputs compared with onnxruntime (``qcompiler run --compare-ort``)
"""

from .interpreter import ExecutionError, Interpreter, Step
from .observers import CompareInterpreter, RangeObserver
from .profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "CompareInterpreter", "ExecutionError", "Interpreter", "Profile", "RangeObserver", "Step",
           "get_profile"]
