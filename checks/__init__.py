"""checks: operational checks and research scripts above the parity benchmark (docs/architecture.md)."""
