"""Graph passes applied to the QDQ model after ``quantize_static``, each measured to pay on this CPU.

- :func:`shapes_from_quantized`: a ``Shape`` that reads a DequantizeLinear output is rewired to read the
  quantized tensor (same shape). Exported UNets compute every GroupNorm reshape target from ``Shape(x)``;
  left alone, ORT dequantizes whole activations only to read their shape (28 full-tensor DQ passes in the
  compact UNet).
- :func:`drop_dead_nodes`: removes nodes whose outputs nobody reads (the orphaned DQs).
- :func:`strip_value_info`: drops the shape annotations quant_pre_process adds (bytes, no speed).
- :func:`short_tensor_names`: renames intermediate tensors and initializers to short ids (node names stay,
  so profiles and per-layer SQNR still read ``/unet/.../conv1/Conv``). QDQ multiplies the tensors, each
  named after its source (``..._output_0_QuantizeLinear_Output``): ~150 kB of the compact int8 file.
"""

from __future__ import annotations

from collections import defaultdict


def shapes_from_quantized(model) -> int:
    """Rewire Shape(DequantizeLinear(q)) to Shape(q) in place; returns how many Shapes were rewired."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    n_done = 0
    for n in g.node:
        if n.op_type != "Shape":
            continue
        p = prod.get(n.input[0])
        if p is not None and p.op_type == "DequantizeLinear":
            n.input[0] = p.input[0]
            n_done += 1
    return n_done


def drop_dead_nodes(model) -> int:
    """Remove nodes none of whose outputs is read (repeatedly); returns how many were removed."""
    g = model.graph
    outputs = {o.name for o in g.output}
    removed = 0
    while True:
        used = defaultdict(int)
        for n in g.node:
            for i in n.input:
                used[i] += 1
        dead = [n for n in g.node if not any(o in outputs or used[o] for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
        removed += len(dead)
    used_inits = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used_inits]:
        g.initializer.remove(init)
    return removed


def strip_value_info(model) -> int:
    n = len(model.graph.value_info)
    del model.graph.value_info[:]
    return n


def short_tensor_names(model) -> int:
    """Rename every tensor except graph inputs/outputs to t<i> / w<i>; returns how many were renamed."""
    g = model.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output}
    mapping: dict[str, str] = {}
    for i, init in enumerate(g.initializer):
        if init.name not in keep:
            mapping[init.name] = f"w{i}"
    k = 0
    for n in g.node:
        for o in n.output:
            if o and o not in keep and o not in mapping:
                mapping[o] = f"t{k}"
                k += 1
    for init in g.initializer:
        init.name = mapping.get(init.name, init.name)
    for n in g.node:
        n.input[:] = [mapping.get(i, i) for i in n.input]
        n.output[:] = [mapping.get(o, o) for o in n.output]
    for vi in g.value_info:
        vi.name = mapping.get(vi.name, vi.name)
    for i in g.input:  # initializers listed as inputs (old IR)
        i.name = mapping.get(i.name, i.name)
    return len(mapping)
