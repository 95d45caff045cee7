"""The GLM operators: ``GLMChatOperator`` (:mod:`~airflow_provider_glm.operators.chat`) and
``GLMBatchOperator`` (:mod:`~airflow_provider_glm.operators.batch`), on a shared base
(:mod:`~airflow_provider_glm.operators.base`).
"""

__all__: list[str] = []
