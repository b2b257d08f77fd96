"""Bringing a sandbox up fast: the saved machine states a sandbox restores instead of booting
(`states`) and the fast-start steps that make and use them (`faststart`)."""
