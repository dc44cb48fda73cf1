"""Example models that satisfy :class:`worker.contract.Model`, loadable by import path.

``worker.examples.mlp:SmallMLP`` and ``worker.examples.mlp:HeavyMLP`` (the benchmark
model) need no artifact: their weights come from a fixed seed.
"""
