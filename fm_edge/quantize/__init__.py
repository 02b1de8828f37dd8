"""int8 for fm-edge: ONNX Runtime static QDQ and a torchao (PT2E) backend, calibrated on the sampler's own
trajectories, with the quality kept and the speed measured.

- :mod:`.calibrate`: record the velocity-net inputs the fp32 sampler visits (every step, labels 0-10, CFG);
- :mod:`.recipe`: the int8 recipe (formats, types, what stays in float), stored as JSON;
- :mod:`.graph`: node roles from the graph structure, MACs, int8 fractions;
- :mod:`.ort_int8`: ``velocity.onnx`` -> ``velocity_int8.onnx``; :mod:`.passes`: post-quantization passes;
- :mod:`.sqnr`: per-layer and end-to-end SQNR of an int8 graph against its float original;
- :mod:`.profile`: ORT per-op-type profiles (where the time goes);
- :mod:`.torchao_backend`: the PyTorch int8 backend (PT2E + X86InductorQuantizer + torch.compile);
- :mod:`.pipeline`: ``fm-edge export --int8`` (three files, a summary, a non-zero exit when quality fails).

Nothing is imported here.
"""
