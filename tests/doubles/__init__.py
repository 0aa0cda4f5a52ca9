"""Test doubles: stand-ins for what cannot run on a CPU-only machine (TensorRT, CUDA).

They prove call sequences and data flow through the code under test, never that the real thing works. Each
double says so in its docstring, and each takes its API surface from the real one: ``fake_tensorrt`` from
TensorRT's API lists in ``tests/data/trt-api``, ``fake_cuda`` from :mod:`daemon.cuda` itself.
"""
