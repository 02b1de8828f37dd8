"""``fm-edge export``: checkpoint -> ``velocity.onnx`` and ``sampler.onnx``, each validated before it lands.

- :mod:`.command`: the command and :func:`~fm_edge.export.command.export` (check, export, validate, land);
- :mod:`.velocity`: the UNet -> ONNX export; :mod:`.sampler_graph`: the whole sampler as one graph;
- :mod:`.validate`: ORT against PyTorch and against the Python sampler, one ✓/✗ line per check;
- :mod:`.metadata`: what goes into every file's ``metadata_props``.

Nothing is imported here, so importing a submodule never pulls in the others.
"""
