"""The gateway: balances requests over health-checked JAX workers. It never imports JAX."""

__version__ = "0.1.0"
