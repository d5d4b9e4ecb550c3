"""Exporters to edge runtimes: ONNX (research/export/onnx.py).

An optional extra (`pip install -e .[export]`, jax2onnx with --no-deps, see README): nothing on the
core training path imports this package, and its modules import jax2onnx / onnxruntime only inside
their functions, so `import research.export.onnx` works without the extra.
"""
