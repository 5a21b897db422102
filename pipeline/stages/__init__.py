"""One module per DVC stage, named as in dvc.yaml: ``python -m pipeline.stages.<name>``."""
