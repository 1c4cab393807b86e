"""The device side (numpy only): everything that runs where the raw input lives.

Importing this package never imports torch; a test proves it.
"""

from .client import Client, Prediction, ServerError
from .masks import MaskSource, RandomMasks
from .runtime import DeviceModel, DevicePayload

__all__ = ["Client", "DeviceModel", "DevicePayload", "MaskSource", "Prediction", "RandomMasks", "ServerError"]
