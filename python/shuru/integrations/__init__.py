"""Adapters for the harnesses agents run in; each imports its library only when used."""
