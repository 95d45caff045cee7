"""``GLMBatchTrigger`` (:mod:`airflow_provider_glm.triggers.batch`): waits for GLM batches in the triggerer."""

__all__: list[str] = []
