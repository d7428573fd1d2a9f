"""Serving a trained run: post-training quantisation (`attnlab.serving.quantize`); the REST server and ONNX export
belong here too. Nothing is imported here, so `quantize` names the module, not its function of the same name."""
