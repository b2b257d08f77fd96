"""Adapters that offer shuru sandboxes to agent harnesses (MCP, the OpenAI Agents SDK, Inspect AI).

Each module is built on the public SDK only and imports its harness's package when it is
used, so `import shuru` never needs an optional extra.
"""
