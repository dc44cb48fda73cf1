"""Pieces the gateway, the job path and the worker share: the error envelope, the
shape of a prediction row, and settings types.

Dependencies point one way (gateway -> jobs -> common, worker -> common); this
package imports none of them, and no JAX.
"""
