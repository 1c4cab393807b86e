"""The device side (numpy only): everything that runs where the raw input lives.

Importing this package never imports torch; a test proves it.
"""

from .block import BlockCertificate
from .certificate import Certificate, PrivacyPolicy
from .client import Client, Prediction, ServerError
from .masks import KeyedMasks, MaskSource, RandomMasks, SimilarityKeyedMasks, make_masks
from .runtime import DeviceModel, DevicePayload

__all__ = ["BlockCertificate", "Certificate", "Client", "DeviceModel", "DevicePayload", "KeyedMasks", "MaskSource",
           "Prediction", "PrivacyPolicy", "RandomMasks", "ServerError", "SimilarityKeyedMasks", "make_masks"]
