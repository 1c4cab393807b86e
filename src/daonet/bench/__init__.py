"""Benchmarks that put daonet next to the alternatives it claims to beat (e.g. homomorphic encryption)."""
