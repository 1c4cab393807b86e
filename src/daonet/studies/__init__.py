"""Studies: experiments built on the core (sweeps over drop rates, the end-to-end demo, method frontiers).

The core (``daonet.device``, ``daonet.server``, ``daonet.train``, ``daonet.export``, ``daonet.audit``, ...) never
imports this package; studies import the core. What a study and the core share (e.g. the per-task training
settings, :data:`daonet.train.TASKS`) lives in the core.
"""
