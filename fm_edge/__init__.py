"""fm-edge: flow-matching digits from training to the edge.

The package root holds only the version and the log levels below; every stage lives in its own module and
imports its heavy dependencies (torch, onnxruntime, gradio) itself, so that ``import fm_edge`` stays instant.
"""

import logging

__version__ = "0.1.0"

# diffusers imports torchao whenever it is installed (for its own quantizers, which fm-edge does not use),
# and that import logs about optional torchao kernels (mxfp8, cutlass), deprecated pytree registrations and
# torchao tensor types: five lines on every torch command. fm-edge's own torchao backend imports torchao only
# when it runs, and these loggers keep their errors.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)
del _name
