"""Interference-aware latency predictors: features (coarse / ewma / fine), regressors
(static, SGD, RLS), calibrated quantiles, forecast mode for schedulers, and evaluation."""

from predlat.predict.base import BasePredictor, Predictor
from predlat.predict.calibration import Calibrator
from predlat.predict.evaluate import (
    Prediction,
    error_summary,
    evaluate_forecast,
    evaluate_posterior,
)
from predlat.predict.forecast import ForecastEnd, Forecaster, RunningBatch, replay
from predlat.predict.predictors import (
    PREDICTOR_NAMES,
    PREDICTORS,
    LinearPredictor,
    SoloPredictor,
    make_predictor,
)

__all__ = [
    "PREDICTORS",
    "PREDICTOR_NAMES",
    "BasePredictor",
    "Calibrator",
    "ForecastEnd",
    "Forecaster",
    "LinearPredictor",
    "Prediction",
    "Predictor",
    "RunningBatch",
    "SoloPredictor",
    "error_summary",
    "evaluate_forecast",
    "evaluate_posterior",
    "make_predictor",
    "replay",
]
