"""Names that moved between the supported Airflow versions (3.1 to 3.3), taken from where each one has them.

Airflow 3.3 exports the task exceptions from ``airflow.sdk.exceptions`` and the configuration as
``airflow.sdk.conf``; 3.1 keeps them in ``airflow.exceptions`` and ``airflow.configuration`` (3.3
still has them there, deprecated). Everything else the provider uses is the same public
``airflow.sdk`` interface on every supported version.
"""

from __future__ import annotations

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout, TaskDeferred
except ImportError:  # Airflow 3.1 and 3.2
    from airflow.exceptions import (  # type: ignore[attr-defined,no-redef,unused-ignore]
        AirflowException,
        AirflowFailException,
        AirflowTaskTimeout,
        TaskDeferred,
    )

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[assignment,no-redef,unused-ignore]

try:
    from airflow.exceptions import AirflowException as _CoreAirflowException  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # a task SDK without the core package
    _CoreAirflowException = AirflowException  # type: ignore[misc,assignment,unused-ignore]

AIRFLOW_EXCEPTIONS: tuple[type[Exception], ...] = (AirflowException, _CoreAirflowException)
"""Airflow's generic error, as the task SDK and as the core package raise it (two classes on Airflow 3.1)."""

__all__ = ["AIRFLOW_EXCEPTIONS", "AirflowException", "AirflowFailException", "AirflowTaskTimeout", "TaskDeferred",
           "conf"]
