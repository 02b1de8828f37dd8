"""``fm-edge demo``: a Gradio page that shows int8 next to fp32, both sampled from the same noise.

- :mod:`.inputs`: the request, every value checked (the API accepts anything, the page only bounds);
- :mod:`.models`: the two ONNX files through the torch-free runtime, and the optional PyTorch reference;
- :mod:`.compare`: same noise -> every backend, timed; PSNR, max |diff|, grids and the heat map (numpy);
- :mod:`.app`: the page, the ``generate`` API endpoint, the queue and ``launch``;
- :mod:`.command`: ``fm-edge demo`` and ``build_demo``.

Runs without torch (``pip install 'fm-edge[demo]'``: gradio, onnxruntime, numpy, pillow). Nothing is imported
here, and gradio only when the demo is built.
"""
