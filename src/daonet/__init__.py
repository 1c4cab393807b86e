"""daonet: private inference with a localized first layer and dropped activation outputs.

The package is split along the trust boundary:

- ``daonet.device``: numpy-only runtime that runs on the user's device (first layer, ReLU,
  dropping, sparse payload, network client). Importing it never imports torch.
- ``daonet.server``: the rest of the network, served over HTTP (torch).
- ``daonet.nn``, ``daonet.train``, ``daonet.export``: building, training and splitting models.

Bring your own model (torch needed, imported only when used)::

    model = daonet.split(model, drop_rate=0.5, example_input=x[:8])   # first layer -> device
    ...                                                              # your own training loop
    daonet.export(model, "bundles/mine", classes=names, public_data=x_public)
    result = daonet.audit("bundles/mine", (x_public, y_public), (x_test, y_test))  # what a server can learn

See docs/design.md for the threat model, the certificate and the audit.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["split", "export", "audit", "__version__"]


def __getattr__(name: str) -> Any:
    """``daonet.split`` and ``daonet.export`` load torch on first use, so ``import daonet`` stays torch-free."""
    if name == "split":
        from .convert import split

        return split
    if name == "export":  # the module daonet.export is callable: daonet.export(model, out_dir, ...)
        return importlib.import_module(".export", __name__)
    if name == "audit":  # the package daonet.audit is callable: daonet.audit(bundle, public_data, test_data)
        return importlib.import_module(".audit", __name__)
    raise AttributeError(f"module 'daonet' has no attribute {name!r}")
