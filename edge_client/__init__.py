"""tandemrec edge SDK: on-device intent model, rerank and offline fallback.

ONNX Runtime + numpy, no torch.
"""
