"""CLI commands beyond train/export, one module per feature area (each registers on ``cli.app``)."""

from . import audit, bench, demo, methods, serve, sweep  # noqa: F401
