"""Where row results and the usage ledger are written: SQL tables (and object storage)."""

__all__: list[str] = []
