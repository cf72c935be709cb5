"""Approved plugins as running containers (DESIGN.md §6)."""
