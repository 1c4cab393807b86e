"""daonet: private inference with a localized first layer and dropped activation outputs.

The package is split along the trust boundary:

- ``daonet.device``: numpy-only runtime that runs on the user's device (first layer, ReLU,
  dropping, sparse payload, network client). Importing it never imports torch.
- ``daonet.server``: the rest of the network, served over HTTP (torch).
- ``daonet.nn``, ``daonet.train``, ``daonet.exporting``: building, training and splitting models.

Bring your own model (torch needed, imported only when used)::

    model = daonet.split(model, drop_rate=0.5, example_input=x[:8])   # first layer -> device
    ...                                                              # your own training loop
    daonet.export(model, "bundles/mine", classes=names, public_data=x_public)
    result = daonet.audit("bundles/mine", (x_public, y_public), (x_test, y_test))  # what a server can learn

``daonet.split`` and ``daonet.export`` are the functions :func:`daonet.convert.split` and
:func:`daonet.convert.export`; ``daonet.audit`` is the package :mod:`daonet.audit`, which calls
:func:`daonet.audit.api.audit` (same signature) so ``daonet.audit.run_audit`` and its submodules stay reachable.
A device-only install (no torch) gets a :class:`~daonet.extras.MissingExtraError` naming the extra to install.

See docs/design.md for the threat model, the certificate and the audit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .extras import missing_extra

if TYPE_CHECKING:  # what the lazy names are, for type checkers and documentation tools
    from . import audit
    from .convert import export, split
    from .studies.plan import plan

__version__ = "0.1.0"
__all__ = ["split", "export", "audit", "plan", "__version__"]

# name -> (module that defines it, attribute, or None for the module itself)
_LAZY = {"split": (".convert", "split"), "export": (".convert", "export"), "audit": (".audit", None),
         "plan": (".studies.plan", "plan")}


def __getattr__(name: str) -> Any:
    """Load ``split``/``export``/``audit``/``plan`` (torch) on first use, so ``import daonet`` stays torch-free."""
    if name not in _LAZY:
        raise AttributeError(f"module 'daonet' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        err = missing_extra(exc, f"daonet.{name}")
        if err is None:
            raise
        raise err from exc
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
