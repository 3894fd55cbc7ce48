"""Feedback to acquisition: per-micrograph scores aggregated to hole, square and grid, and a plan.

- :mod:`~cryoflow.feedback.names`, :mod:`~cryoflow.feedback.locations`,
  :mod:`~cryoflow.feedback.mdoc`, :mod:`~cryoflow.feedback.navigator`: where each micrograph was taken;
- :mod:`~cryoflow.feedback.scores`, :mod:`~cryoflow.feedback.aggregate`: the run's scores per hole and square;
- :mod:`~cryoflow.feedback.spatial`, :mod:`~cryoflow.feedback.planner`: predictions and the plan;
- :mod:`~cryoflow.feedback.schema`, :mod:`~cryoflow.feedback.report`, :mod:`~cryoflow.feedback.run`: outputs;
- :mod:`~cryoflow.feedback.acquisition`, :mod:`~cryoflow.feedback.bench`: the acquisition simulator and its benchmark.
"""

from cryoflow.feedback.planner import Costs, PlanState
from cryoflow.feedback.run import run_feedback
from cryoflow.feedback.schema import SCHEMA

__all__ = ["SCHEMA", "Costs", "PlanState", "run_feedback"]
