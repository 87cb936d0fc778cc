"""The pass library. Importing this package registers every built-in pass.

One module per family:

* ``opset`` — UpgradeOpset
* ``constants`` — ConstantToInitializer
* ``cleanup`` — RemoveIdentity, RemoveDropout, SumToAdd, EliminateDeadNodes
* ``fold_constants`` — FoldConstants (onnx-graphsurgeon)
* ``fold_batchnorm`` — FoldBatchNorm (also per-channel Mul/Div/Add/Sub by constants)
* ``fuse_activations`` — FuseHardSwish
* ``shape_inference`` — InferShapes
* ``dynamic`` — GemmToMatMul, LowerDynamicMatMul (dynamic int8: Gemm as MatMul + Add; MatMulInteger form)
* ``assign_precision`` — AssignPrecision (which nodes run in int8, weight specs), AssignDynamic (dynamic int8)
* ``calibrate`` — Calibrate (activation specs from observed ranges)
* ``insert_qdq`` — InsertQDQ (QuantizeLinear/DequantizeLinear, int32 biases)
* ``fold_weights`` — FoldQuantizedWeights (integer weight initializers)
* ``latency_guard`` — KeepFloatReference, LatencyGuard (keep int8 only where it is faster)
* ``smoothquant`` — SmoothQuant (activation outliers migrated into linear-layer weights)
* ``range_search`` — SearchWeightRanges (MSE weight clipping), CalibrateSearch (range method chosen on held-out data)
* ``equalize`` — KeepBatchNormStats, CrossLayerEqualization, HighBiasAbsorption, ReplaceReLU6 (DFQ)
* ``bias_correction`` — BiasCorrection (empirical or analytic, DFQ)
* ``adaround`` — AdaRound (learned rounding of weights)
* ``weight_bits`` — WeightBits (4-bit weights in int8 storage)
* ``check_kernels`` — CheckKernels (deployed integer kernels vs simulation; avoids int16 saturation)
* ``placement`` — LatencyPlacement (int8 region by region, where onnxruntime runs it faster)
* ``mixed_precision`` — KeepOriginalModel, MixedPrecision (layers kept float under an output-error budget)
* ``structure`` — RecognizeStructure (transformer and convolutional regions, for region-aware passes)
* ``weight_rtn`` — WeightRTN (weight-only plan: 2/4/8-bit blocks, round to nearest)
* ``weight_hqq``, ``weight_awq``, ``weight_gptq`` — WeightHQQ, WeightAWQ, WeightGPTQ (weight-only algorithms)
* ``matmulnbits`` — LowerMatMulNBits (weight-only layers as onnxruntime's MatMulNBits)
* ``source_model`` — UpcastFloat32 (float16/bfloat16 compute), IngestQDQ, KeepQDQScales (QDQ models as input)
"""

from .adaround import AdaRound
from .assign_precision import AssignDynamic, AssignPrecision
from .bias_correction import BiasCorrection
from .calibrate import Calibrate
from .check_kernels import CheckKernels
from .cleanup import EliminateDeadNodes, RemoveDropout, RemoveIdentity, SumToAdd
from .constants import ConstantToInitializer
from .dynamic import GemmToMatMul, LowerDynamicMatMul
from .equalize import CrossLayerEqualization, HighBiasAbsorption, KeepBatchNormStats, ReplaceReLU6
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .fold_weights import FoldQuantizedWeights
from .fuse_activations import FuseHardSwish
from .insert_qdq import InsertQDQ
from .latency_guard import KeepFloatReference, LatencyGuard
from .matmulnbits import LowerMatMulNBits
from .mixed_precision import KeepOriginalModel, MixedPrecision
from .placement import LatencyPlacement
from .opset import UpgradeOpset
from .range_search import CalibrateSearch, SearchWeightRanges
from .shape_inference import InferShapes
from .smoothquant import SmoothQuant
from .source_model import IngestQDQ, KeepQDQScales, UpcastFloat32
from .structure import RecognizeStructure
from .weight_awq import WeightAWQ
from .weight_bits import WeightBits
from .weight_gptq import WeightGPTQ
from .weight_hqq import WeightHQQ
from .weight_rtn import WeightRTN

__all__ = [
    "AdaRound",
    "AssignDynamic",
    "AssignPrecision",
    "BiasCorrection",
    "Calibrate",
    "CalibrateSearch",
    "CheckKernels",
    "FoldQuantizedWeights",
    "FuseHardSwish",
    "GemmToMatMul",
    "IngestQDQ",
    "InsertQDQ",
    "KeepQDQScales",
    "KeepFloatReference",
    "KeepOriginalModel",
    "LowerDynamicMatMul",
    "MixedPrecision",
    "LatencyGuard",
    "LatencyPlacement",
    "LowerMatMulNBits",
    "ConstantToInitializer",
    "CrossLayerEqualization",
    "HighBiasAbsorption",
    "KeepBatchNormStats",
    "RecognizeStructure",
    "ReplaceReLU6",
    "EliminateDeadNodes",
    "FoldBatchNorm",
    "FoldConstants",
    "InferShapes",
    "RemoveDropout",
    "RemoveIdentity",
    "SearchWeightRanges",
    "SmoothQuant",
    "SumToAdd",
    "UpcastFloat32",
    "UpgradeOpset",
    "WeightAWQ",
    "WeightBits",
    "WeightGPTQ",
    "WeightHQQ",
    "WeightRTN",
]
