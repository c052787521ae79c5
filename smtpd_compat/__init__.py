"""Placeholder; the core lands next."""
