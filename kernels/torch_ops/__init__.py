"""torch kernels (backend ``"torch"``): the float ops of CNN/OCR models and QuantizeLinear /
DequantizeLinear as differentiable fake quantizers, so that the :class:`~qcompiler.executor.Interpreter`
runs a model with autograd (quantization-aware fine-tuning, :mod:`qcompiler.finetune`).

torch is an optional dependency (``pip install 'onnx-qcompiler[finetune]'``): nothing imports this
package except :mod:`qcompiler.finetune` and its tests; importing it registers the kernels. Kernels take
``torch.Tensor`` or ``np.ndarray`` inputs (constants stay numpy until an op needs them as tensors: shape
arithmetic keeps exact integers) and return tensors. An op without a torch kernel is refused by the
torch interpreter (:class:`qcompiler.finetune.graph.TorchInterpreter`) with its name, never run by
another backend behind autograd's back.
"""

from __future__ import annotations

from . import ops, quantize  # noqa: F401  (registration)
from ._common import BACKEND, registered_ops

__all__ = ["BACKEND", "registered_ops"]
