"""``[core] hostname_callable`` of the test cluster's Celery workers: the worker's own name.

Two workers on one machine share its hostname. Each is started with ``GLM_CELERY_WORKER_NAME`` and
``AIRFLOW__CORE__HOSTNAME_CALLABLE=worker_hostname.worker_name``, so the task instances it runs record
which worker that was in their ``hostname``.
"""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    """The worker's name, or the machine's FQDN outside a test worker."""
    return os.environ.get("GLM_CELERY_WORKER_NAME") or socket.getfqdn()
