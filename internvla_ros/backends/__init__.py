"""Compiled inference: ONNX export of the staged inference path and backends that run it.

``create_backend(["onnxruntime", "torch"], BackendOptions(model_dir, fallback=True))`` returns the
first backend that can run here and says which ones it skipped.
"""
