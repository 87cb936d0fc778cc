"""Calibration: data sources, streaming observers, and collection with onnxruntime.

* :mod:`.data` — :func:`open_calibration` turns a directory of ``.npz`` files, one ``.npz``, a list
  of feed dicts, a function returning an iterator, or an onnxruntime ``CalibrationDataReader`` into
  a validated, re-iterable :class:`CalibrationSet`.
* :mod:`.observers` — constant-memory observers: min/max, percentile, entropy (KL), MSE.
* :mod:`.collect` — :func:`collect` runs the model in onnxruntime and feeds every requested tensor
  to its observer, one feed at a time.

Note: ``qcompiler.calibration.collect`` is the function; the module is
``importlib.import_module("qcompiler.calibration.collect")``.
"""

from .collect import DEFAULT_MAX_OUTPUTS_BYTES, collect
from .data import (CalibrationDataError, CalibrationSet, InputSpec, OneShotSourceWarning, check_calibration, check_feed,
                   input_specs, model_inputs, open_calibration)
from .observers import (OBSERVERS, EntropyObserver, MinMaxObserver, MSEObserver, Observer, PercentileObserver,
                        StreamingHistogram, kl_divergences, make_observer_factory)

METHODS = tuple(OBSERVERS)
"""The activation range methods (``--calibration``)."""

__all__ = [
    "DEFAULT_MAX_OUTPUTS_BYTES",
    "METHODS",
    "OBSERVERS",
    "CalibrationDataError",
    "CalibrationSet",
    "EntropyObserver",
    "InputSpec",
    "MSEObserver",
    "MinMaxObserver",
    "Observer",
    "OneShotSourceWarning",
    "PercentileObserver",
    "StreamingHistogram",
    "check_calibration",
    "check_feed",
    "collect",
    "input_specs",
    "kl_divergences",
    "make_observer_factory",
    "model_inputs",
    "open_calibration",
]
