"""``@task.glm``: the TaskFlow decorator (:mod:`airflow_provider_glm.decorators.glm`)."""

__all__: list[str] = []
