"""What runs a bundle's graph: ONNX Runtime on every CPU, OpenVINO where the CPU has bf16 matrix units.

Everything around the run (tokenizing, windows, scoring, the batcher, the protocols) is the same
whichever backend runs; a backend only turns the graph's input arrays into logits.

* ``base``: the interface every backend provides (``Backend``).
* ``onnxruntime_backend``: ONNX Runtime's CPU session, for every bundle and every CPU.
* ``openvino_backend``: OpenVINO, compiled in bf16 (or f32) from the fp32 graph a bundle carries for it.
* ``choice``: the fixed rule that picks one for a bundle on this CPU (flags and versions, never timings).
"""
