"""Importers for other projects' checkpoints (key maps and format checks, no foreign code)."""
