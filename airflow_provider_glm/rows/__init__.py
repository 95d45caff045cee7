"""The row engine: from an operator's validated parameters to one outcome per row, written to the sinks.

Internal (every module is private); the operators in :mod:`airflow_provider_glm.operators` are its
public face. ``docs/architecture.md`` shows how one row flows through these modules.
"""

__all__: list[str] = []
