"""The pipeline: stages that join the packages below with content-keyed caches and MLflow
(:mod:`benchmark.pipeline.tracking`, the only module importing mlflow), the run plan and the
report stage."""
