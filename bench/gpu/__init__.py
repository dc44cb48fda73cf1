"""The GPU kit: everything a borrowed GPU machine needs to measure the stack in one command.

``bench.gpu.carry`` downloads the wheels such a machine lacks (``make gpu-wheels``)
and installs them there; ``python -m bench.gpu`` (``make bench-gpu``) measures
the in-process limit, a worker direct and the gateway in front of workers on the
GPU(s), with GPU utilisation, and writes a JSON and a Markdown table
(``bench.gpu.summary``). docs/gpu.md says how to run it.
"""
