"""The pass library. Importing this package registers every built-in pass.

One module per family:

* ``opset`` — UpgradeOpset
* ``constants`` — ConstantToInitializer
* ``cleanup`` — RemoveIdentity, RemoveDropout, EliminateDeadNodes
* ``fold_constants`` — FoldConstants (onnx-graphsurgeon)
* ``fold_batchnorm`` — FoldBatchNorm
* ``shape_inference`` — InferShapes
"""

from .cleanup import EliminateDeadNodes, RemoveDropout, RemoveIdentity
from .constants import ConstantToInitializer
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .opset import UpgradeOpset
from .shape_inference import InferShapes

__all__ = [
    "ConstantToInitializer",
    "EliminateDeadNodes",
    "FoldBatchNorm",
    "FoldConstants",
    "InferShapes",
    "RemoveDropout",
    "RemoveIdentity",
    "UpgradeOpset",
]
