"""Complete models that satisfy :class:`worker.contract.Model`, loadable by import path.

``iris`` (the default: NUTS posterior samples, with ``fit``), ``mlp`` (classifiers,
``HeavyMLP`` is the benchmark model), ``regression`` (continuous outputs, a
closed-form ``fit``), ``digits`` (an 8 x 8 input), ``hourly`` (a scalar int32 row,
no labels) and ``encoder`` (a transformer encoder over token ids, the GPU kit's
model). Only ``iris`` reads a shipped artifact; the others serve out of the box
(fixed seeds or a fit at load).
"""
