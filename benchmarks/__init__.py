"""ChEF-style evaluation: scenarios, instructions, inferencers, metrics, the evaluator and desiderata.

Importing this package registers every built-in part in `lamm.registry` (SCENARIOS, INSTRUCTIONS,
INFERENCERS, METRICS); `Registry.get` imports it on the first lookup. See benchmarks/README.md.
"""
from __future__ import annotations

from lamm.benchmarks import (adapters, captions, classification, fewshot, inferencers, instructions,  # noqa: F401
                             metrics, mme, mmmu, scenarios, vqa)  # (registration)
from lamm.benchmarks.base import EvalSample, Example, Inferencer, Instruction, Metric, Prediction, Query, Scenario
from lamm.benchmarks.evaluator import EvalSpec, Evaluator, evaluate

__all__ = ["EvalSample", "EvalSpec", "Evaluator", "Example", "Inferencer", "Instruction", "Metric", "Prediction",
           "Query", "Scenario", "evaluate"]
