"""CLI commands, one module per feature area. Each defines plain functions; ``daonet.cli`` registers them."""
