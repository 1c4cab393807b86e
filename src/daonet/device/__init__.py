"""The device side (numpy only): everything that runs where the raw input lives.

Importing this package never imports torch; a test proves it.
"""

from .masks import MaskSource, RandomMasks
from .runtime import DeviceModel, DevicePayload

__all__ = ["DeviceModel", "DevicePayload", "MaskSource", "RandomMasks"]
