"""The static page that runs ``sampler.onnx`` in the browser with onnxruntime-web (``fm-edge web``)."""
