"""Good-class selection: score 2D class averages, keep the good ones, learn from decisions.

Entry points: :func:`~cryoflow.classassess.run.run_classassess` (``cryoflow classassess``)
and :func:`~cryoflow.classassess.train.train_scorer` (``cryoflow classassess train``).
Modules: :mod:`inputs` (cryoflow, RELION or bare-stack classes), :mod:`features` (what an
average and its metadata say), :mod:`model` (logistic + CNN, calibrated), :mod:`select`
(threshold, floors, overrides), :mod:`examples` (simulated, labelled classifications),
:mod:`train`, :mod:`run`, :mod:`report`, :mod:`bench`.
"""

from cryoflow.classassess.run import run_classassess

__all__ = ["run_classassess"]
