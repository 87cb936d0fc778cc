"""Calibration: data sources, streaming observers, and collection with onnxruntime."""

from .collect import collect
from .data import CalibrationDataError, CalibrationSet, InputSpec, check_feed, open_calibration
from .observers import (OBSERVERS, EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver,
                        StreamingHistogram, make_observer_factory)

__all__ = [
    "OBSERVERS",
    "CalibrationDataError",
    "CalibrationSet",
    "EntropyObserver",
    "InputSpec",
    "MSEObserver",
    "MinMaxObserver",
    "PercentileObserver",
    "StreamingHistogram",
    "check_feed",
    "collect",
    "make_observer_factory",
    "open_calibration",
]
