"""The pass library. Importing this package registers every built-in pass.

One module per family:

* ``opset`` — UpgradeOpset
* ``constants`` — ConstantToInitializer
* ``cleanup`` — RemoveIdentity, RemoveDropout, SumToAdd, EliminateDeadNodes
* ``fold_constants`` — FoldConstants (onnx-graphsurgeon)
* ``fold_batchnorm`` — FoldBatchNorm (also per-channel Mul/Div/Add/Sub by constants)
* ``fuse_activations`` — FuseHardSwish
* ``shape_inference`` — InferShapes
* ``assign_precision`` — AssignPrecision (which nodes run in int8, weight specs)
* ``calibrate`` — Calibrate (activation specs from observed ranges)
* ``insert_qdq`` — InsertQDQ (QuantizeLinear/DequantizeLinear, int32 biases)
* ``fold_weights`` — FoldQuantizedWeights (integer weight initializers)
* ``latency_guard`` — KeepFloatReference, LatencyGuard (keep int8 only where it is faster)
* ``smoothquant`` — SmoothQuant (activation outliers migrated into linear-layer weights)
* ``range_search`` — SearchWeightRanges (MSE weight clipping), CalibrateSearch (range method chosen on held-out data)
"""

from .assign_precision import AssignPrecision
from .calibrate import Calibrate
from .cleanup import EliminateDeadNodes, RemoveDropout, RemoveIdentity, SumToAdd
from .constants import ConstantToInitializer
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .fold_weights import FoldQuantizedWeights
from .fuse_activations import FuseHardSwish
from .insert_qdq import InsertQDQ
from .latency_guard import KeepFloatReference, LatencyGuard
from .opset import UpgradeOpset
from .range_search import CalibrateSearch, SearchWeightRanges
from .shape_inference import InferShapes
from .smoothquant import SmoothQuant

__all__ = [
    "AssignPrecision",
    "Calibrate",
    "CalibrateSearch",
    "FoldQuantizedWeights",
    "FuseHardSwish",
    "InsertQDQ",
    "KeepFloatReference",
    "LatencyGuard",
    "ConstantToInitializer",
    "EliminateDeadNodes",
    "FoldBatchNorm",
    "FoldConstants",
    "InferShapes",
    "RemoveDropout",
    "RemoveIdentity",
    "SearchWeightRanges",
    "SmoothQuant",
    "SumToAdd",
    "UpgradeOpset",
]
