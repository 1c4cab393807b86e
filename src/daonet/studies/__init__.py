"""Studies built on the core: the study pipeline, ``daonet plan`` and its grids, the drop-rate sweep, the demo.

The core (``daonet.device``, ``daonet.server``, ``daonet.train``, ``daonet.export``, ``daonet.audit``, ...) never
imports this package; studies import the core. What a study and the core share (e.g. the per-task training
settings, :data:`daonet.train.TASKS`) lives in the core.
"""
