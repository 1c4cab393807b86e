"""CLI commands for the audit feature area."""
