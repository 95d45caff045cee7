"""The GLM spend page: an Airflow 3 plugin that shows the usage ledger inside the Airflow UI.

:mod:`~airflow_provider_glm.plugins.spend` is the plugin class Airflow loads through the
``airflow.plugins`` entry point; it imports nothing heavy. The FastAPI app
(:mod:`~airflow_provider_glm.plugins._app`), the SQL aggregations
(:mod:`~airflow_provider_glm.plugins._spend_queries`) and the SVG chart
(:mod:`~airflow_provider_glm.plugins._svg_chart`) are imported only by the API server, when it
mounts the app.
"""

__all__: list[str] = []
