"""Adapters that make shuru a sandbox choice in agent harnesses (optional extras)."""
