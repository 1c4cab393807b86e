"""The server side: the rest of the network, fed only sparse dropped activations."""

from .model import ServerModel

__all__ = ["ServerModel"]
