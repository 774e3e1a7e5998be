"""Queries: what to separate (parse.py) and how it becomes an embedding (clap.py)."""

from querysep.query.clap import ClapQueryEncoder
from querysep.query.parse import AudioQuery, Query, as_queries, as_query, parse_instruction

__all__ = ["AudioQuery", "ClapQueryEncoder", "Query", "as_queries", "as_query", "parse_instruction"]
