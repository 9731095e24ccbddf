"""Optuna's side of a sweep, which `python -m pipeline.tune` launches.

- `storage`: where the study lives (a journal file, or PostgreSQL);
- `study`: its identity (the settings it was drawn under) and its MLflow parent run;
- `worker`: a worker process's loop, and the objective each trial trains;
- `best`: the confirmation of the best trials on more seeds, the ranking, the figures.
"""
