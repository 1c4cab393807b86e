"""The app's routes, one router per concern: :mod:`.models` (the model API) and :mod:`.operations`
(health, readiness, metrics). Both take what they share from :mod:`daonet.server.services`."""

from .models import PROTECTED_PREFIX, models_router
from .operations import operations_router

__all__ = ["models_router", "operations_router", "PROTECTED_PREFIX"]
