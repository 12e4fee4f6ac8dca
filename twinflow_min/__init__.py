"""twinflow-min: a small, exact PyTorch implementation of TwinFlow (arXiv:2512.05150).

Time convention everywhere in this package: x_t = (1 - t) * x + t * z, t = 1 is noise,
t = 0 is data, and negative t (in [-1, 0)) is the fake (twin) branch.
"""

# Importing the large recipe registers it with twinflow.twinflow_losses(recipe="large"):
# twinflow_large builds on twinflow, never the reverse, so the two never import each other.
from twinflow_min import twinflow_large  # noqa: F401

__version__ = "0.1.0"
