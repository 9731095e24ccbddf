"""Stage `train`: fit the VAE, save it, and open the MLflow run that later stages extend."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

from pipeline import data
from pipeline.configuration import config_id
from pipeline.history import read_history, write_history
from pipeline.params import Params, flatten, load_params
from pipeline.paths import HISTORY, MODEL, PREPARED, SUMMARY
from pipeline.stage import run_stage
from pipeline.tracking import runs, store

# Checkpoints of an unfinished training; not a DVC output, so `dvc repro` does not wipe them.
BACKUP = Path("checkpoints/train")
METRICS = Path("metrics/train.json")


def training_key(params: Params, data_digest: str) -> str:
    """What a checkpoint belongs to: the settings that shape training, and the data."""
    sections = {
        k: v for k, v in flatten(params).items() if k.split(".")[0] in ("base", "data", "model", "train")
    }
    return hashlib.sha256(json.dumps([sections, data_digest], sort_keys=True).encode()).hexdigest()


def run_to_resume(key: str) -> str | None:
    """The MLflow run of an interrupted training with the same key, if its checkpoint is here."""
    state = BACKUP / "run.json"
    saved = json.loads(state.read_text()) if state.is_file() else {}
    if saved.get("key") == key:
        return saved["run_id"]
    shutil.rmtree(BACKUP, ignore_errors=True)  # another configuration's leftovers
    return None


def epoch_images(params: Params, val: data.Split, logged: frozenset[tuple[str, int]]) -> list:
    """The callback that logs pictures every `plot.epoch_images` epochs, or none where that is 0."""
    from pipeline.tracking.callbacks import EpochImages

    if not params.plot.epoch_images:
        return []
    return [
        EpochImages(
            val.images,
            val.labels,
            every=params.plot.epoch_images,
            epochs=params.train.epochs,
            originals=params.plot.n_reconstructions,
            prior_grid=params.plot.prior_grid,
            seed=params.base.seed,
            logged=logged,
        )
    ]


def main() -> None:
    # Keras' modules, once `run_stage` has started its backend
    import keras

    from pipeline.backend import TAGS
    from pipeline.model import inference_model, save_vae
    from pipeline.tracking import callbacks, logged_model
    from pipeline.training import TrainingError, fit_vae

    params = load_params()
    splits = data.load_prepared(PREPARED)
    summary = json.loads(SUMMARY.read_text())
    train_images, val_images = splits["train"].images, splits["val"].images  # uint8 (n, 28, 28)
    key = training_key(params, summary["digest"])
    resume_run_id = run_to_resume(key)

    config = config_id(params, summary["digest"])
    with runs.training_run(
        params, config=config, data_digest=summary["digest"], resume_run_id=resume_run_id, tags=TAGS
    ) as run:
        BACKUP.mkdir(parents=True, exist_ok=True)
        (BACKUP / "run.json").write_text(json.dumps({"key": key, "run_id": run.info.run_id}) + "\n")
        if resume_run_id is None:
            runs.log_dataset(train_images, digest=summary["digest"], source=str(PREPARED))
            already_logged, pictures = frozenset(), frozenset()
        else:
            already_logged, pictures = (
                runs.logged_steps(resume_run_id),
                callbacks.logged_images(resume_run_id),
            )
            print(f"train: resuming run {resume_run_id} from its last checkpoint")
        try:
            # Order matters at each epoch's end: history and metrics first, then the checkpoint.
            vae, _ = fit_vae(
                train_images,
                val_images,
                model=params.model,
                train=params.train,
                seed=params.train.seed,
                callbacks=[
                    keras.callbacks.CSVLogger(str(BACKUP / "history.csv"), append=True),
                    callbacks.EpochMetrics(skip_steps=already_logged),
                    *epoch_images(params, splits["val"], pictures),
                    # Two checkpoints: a kill while one is being written leaves the other to resume from.
                    keras.callbacks.BackupAndRestore(str(BACKUP / "state"), double_checkpoint=True),
                ],
                state_dir=BACKUP,
                active_threshold=params.evaluate.active_threshold,
            )
            history = read_history(BACKUP / "history.csv")
            final = {name: values[-1] for name, values in history.items() if name != "epoch"}
            if not all(math.isfinite(v) for v in final.values()):
                raise TrainingError(f"training diverged: final metrics {final}; lower train.learning_rate")
        except TrainingError:
            runs.mark_diverged()  # counts against its configuration wherever configurations are ranked
            raise
        final = {"loss": final["loss"], "val_loss": final["val_loss"]}  # the rest is in history.csv
        if params.train.early_stopping:  # the model kept is the best epoch's
            best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
            final = {"loss": history["loss"][best], "val_loss": history["val_loss"][best], "best_epoch": best}
            runs.log_metrics({"best_epoch": best})
        runs.log_metrics({"val_loss": final["val_loss"]})  # the model kept: what it is chosen by
        save_vae(vae, MODEL)
        runs.record_model_hash(MODEL)
        for path in (HISTORY, METRICS):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_history(history, HISTORY)
        METRICS.write_text(json.dumps(final, indent=2) + "\n")
        model = logged_model.log_and_register(inference_model(vae), params, config, final["val_loss"])
        runs.write_run_file(run, model)
    shutil.rmtree(BACKUP)
    print(
        f"train: val_loss {final['val_loss']:.3f} nats; model {model['registered_model']} "
        f"version {model['model_version']} (models:/{model['model_id']})\n"
        f"train: run {store.run_link(run)}{store.ui_hint()}"
    )


if __name__ == "__main__":
    run_stage(main, keras=True)
