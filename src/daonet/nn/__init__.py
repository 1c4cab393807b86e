"""PyTorch building blocks: the localized first layer with dropped outputs, and a small model zoo."""

from .layers import LocalizedFirstLayer, SplitModel
from .zoo import ARCHS, build_model, register_arch

__all__ = ["LocalizedFirstLayer", "SplitModel", "ARCHS", "build_model", "register_arch"]
