"""Everything that talks to MLflow: the store, runs, the Keras callback, the registry, the logged model.

Nothing outside this package imports mlflow.
"""
