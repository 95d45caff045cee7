"""``GLMHook`` (:mod:`airflow_provider_glm.hooks.glm`): the ``glm`` connection turned into GLM clients."""

__all__: list[str] = []
