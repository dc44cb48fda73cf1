"""The served model: replace this file with your own model to serve it.

The contract is :class:`worker.contract.Model` (README, "Serve your own model"):
a name, the per-row ``input_shape``, ``load`` for the parameters and a pure
``predict_batch`` that the runtime jits, pads and batches. The worker serves the
one Model class this module holds, whatever its name (``MODEL=worker.model``).

By default it serves the Bayesian logistic regression on Iris of
``worker/examples/iris.py``; ``worker/examples/`` holds the other complete models.
"""

from worker.examples.iris import IrisBayesianLogReg

__all__ = ["IrisBayesianLogReg"]
