"""Interference-aware latency predictors: features (coarse / ewma / fine), regressors
(static, SGD, RLS), calibrated quantiles, forecast mode for schedulers, and evaluation."""

from predlat.predict.base import BasePredictor, ForecastPrior, Predictor, SlowdownModel
from predlat.predict.calibration import Calibrator
from predlat.predict.evaluate import (
    Prediction,
    error_summary,
    evaluate_forecast,
    evaluate_posterior,
)
from predlat.predict.forecast import ForecastEnd, Forecaster, RunningBatch
from predlat.predict.model import LatencyForecast, LatencyModel
from predlat.predict.predictors import (
    PREDICTOR_NAMES,
    PREDICTORS,
    LinearPredictor,
    SoloPredictor,
    make_predictor,
    register_predictor,
)
from predlat.predict.replay import replay

__all__ = [
    "PREDICTORS",
    "PREDICTOR_NAMES",
    "BasePredictor",
    "Calibrator",
    "ForecastEnd",
    "ForecastPrior",
    "Forecaster",
    "LatencyForecast",
    "LatencyModel",
    "LinearPredictor",
    "Prediction",
    "Predictor",
    "RunningBatch",
    "SlowdownModel",
    "SoloPredictor",
    "error_summary",
    "evaluate_forecast",
    "evaluate_posterior",
    "make_predictor",
    "register_predictor",
    "replay",
]
