"""fm-edge: flow-matching digits from training to the edge.

The package root holds only the version; every stage lives in its own module and imports its heavy
dependencies (torch, onnxruntime, gradio) itself, so that ``import fm_edge`` stays instant.
"""

__version__ = "0.1.0"
