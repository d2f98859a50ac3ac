"""Shared helpers for the persona LoRA notebook series: one module per idea (see README.md, "Layout")."""
