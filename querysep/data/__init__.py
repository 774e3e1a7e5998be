"""Datasets: caption manifests, converters from published metadata, on-the-fly mixing."""
