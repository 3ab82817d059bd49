"""The retraining pipeline: data -> validation -> models -> evaluation -> MLflow registry."""
