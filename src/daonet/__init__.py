"""daonet: private inference with a localized first layer and dropped activation outputs.

The package is split along the trust boundary:

- ``daonet.device``: numpy-only runtime that runs on the user's device (first layer, ReLU,
  dropping, sparse payload, network client). Importing it never imports torch.
- ``daonet.server``: the rest of the network, served over HTTP (torch).
- ``daonet.nn``, ``daonet.train``, ``daonet.export``: building, training and splitting models.
"""

__version__ = "0.1.0"
