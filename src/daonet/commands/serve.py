"""CLI commands for the serve feature area."""
