"""Which ``pip install 'daonet[EXTRA]'`` a missing module needs, for library calls (the CLI has the launcher).

``pip install daonet`` is the device runtime only; ``daonet.split``, ``daonet.export`` and ``daonet.audit`` need
torch (the ``train`` extra). Without it they raise :class:`MissingExtraError`, whose message names the extra,
instead of a bare ``ModuleNotFoundError: No module named 'torch'``.
"""

from __future__ import annotations

from .errors import DaonetError
from .launcher import MODULE_EXTRA

__all__ = ["MissingExtraError", "missing_extra"]


class MissingExtraError(DaonetError, ModuleNotFoundError):
    """An optional dependency is not installed; ``str(err)`` names the extra that installs it."""


def missing_extra(exc: ModuleNotFoundError, entry: str, default_extra: str = "train") -> MissingExtraError | None:
    """The error to raise for ``entry`` (e.g. ``"daonet.split"``) when ``exc`` is one of daonet's optional
    dependencies; ``None`` when it is not (a genuine bug: re-raise ``exc``)."""
    top = (exc.name or "").split(".")[0]
    if top not in MODULE_EXTRA:
        return None
    extra = MODULE_EXTRA[top] or default_extra
    err = MissingExtraError(f"{entry} needs {top}, which is not installed: pip install 'daonet[{extra}]' (this "
                            "install is the device runtime only: from daonet.device import DeviceModel, Client)")
    err.name = top
    return err
