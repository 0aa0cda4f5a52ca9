"""Benchmarks (``trtstream bench``): ratios measured side by side in one run, never timed tests.

``cpu``: ONNX Runtime engine-only against the whole daemon (decode to publish). ``gpu``: engine-only,
naive, the daemon's pipeline with CPU or GPU preprocessing, and fed by NVDEC, with latency, frames per
joule, memory and accuracy against FP32 ONNX Runtime. Results with card, date and command go into
``docs/benchmarks.md``.
"""
