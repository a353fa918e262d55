"""MLflow tracking and registry: runs for pruning and fine-tuning, the adapter as a pyfunc model, aliases.

Only this package (and ``steps/tracking.py``, which reads the lake for it) talks to MLflow.
"""
