"""CLI commands for the bench feature area."""
