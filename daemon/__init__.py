"""trtstream: an edge video-inference daemon.

Frames flow capture -> preprocess -> inference -> publish, each stage in its own module:
``sources`` (capture threads), ``framequeue`` (bounded per-source queues and the cross-source
multiplexer), ``scheduler`` (batching, in-flight slots, in-order completion), ``backends``
(ONNX Runtime today; TensorRT and torch behind the same protocol), ``publisher`` (ZeroMQ),
``service`` (wiring, signals) and ``cli``.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
