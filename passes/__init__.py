"""The pass library. Importing this package registers every built-in pass.

One module per family:

* ``opset`` — UpgradeOpset
* ``constants`` — ConstantToInitializer
* ``cleanup`` — RemoveIdentity, RemoveDropout, EliminateDeadNodes
* ``fold_constants`` — FoldConstants (onnx-graphsurgeon)
* ``fold_batchnorm`` — FoldBatchNorm
* ``shape_inference`` — InferShapes
* ``assign_precision`` — AssignPrecision (which nodes run in int8, weight specs)
* ``calibrate`` — Calibrate (activation specs from observed ranges)
* ``insert_qdq`` — InsertQDQ (QuantizeLinear/DequantizeLinear, int32 biases)
* ``fold_weights`` — FoldQuantizedWeights (integer weight initializers)
"""

from .assign_precision import AssignPrecision
from .calibrate import Calibrate
from .cleanup import EliminateDeadNodes, RemoveDropout, RemoveIdentity
from .constants import ConstantToInitializer
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .fold_weights import FoldQuantizedWeights
from .insert_qdq import InsertQDQ
from .opset import UpgradeOpset
from .shape_inference import InferShapes

__all__ = [
    "AssignPrecision",
    "Calibrate",
    "FoldQuantizedWeights",
    "InsertQDQ",
    "ConstantToInitializer",
    "EliminateDeadNodes",
    "FoldBatchNorm",
    "FoldConstants",
    "InferShapes",
    "RemoveDropout",
    "RemoveIdentity",
    "UpgradeOpset",
]
