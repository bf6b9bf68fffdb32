"""Inference outside training: streaming classification, frame sources, ONNX export, the HTTP server.

Modules here other than ``export`` import neither torch nor the training stack at module level,
so the ONNX demo path runs with numpy, OpenCV and onnxruntime alone (and ``tools/serve.py`` with
FastAPI besides: ``server``, ``service``, ``batching``, ``workers``, ``uploads``, ``page.html``).
"""
