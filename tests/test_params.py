"""params.yaml validation: every mistake names its key; YAML is read as DVC reads it."""

import pytest

from pipeline.params import ParamsError, flatten, load_params, parse_params


def test_repository_params_are_valid_and_match_the_seed():
    params = load_params()
    assert params.model.latent_dim == 2
    assert params.model.encoder_filters == [32, 64]
    assert params.train.optimizer == "nadam"
    assert params.train.batch_size == 100
    assert params.train.epochs == 30
    assert params.data.val_size == 5000


def test_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n")
    lr = load_params(path).train.learning_rate
    assert isinstance(lr, float) and lr == 0.001


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"base": {"seed": 4.5}}, "base.seed"),
        ({"model": {"latent_dim": True}}, "model.latent_dim"),
        ({"model": {"latent_dim": 0}}, "model.latent_dim"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"learning_rate": -0.1}}, "train.learning_rate"),
        ({"train": {"optimizer": "adamax"}}, "train.optimizer"),
        ({"train": {"steps_per_execution": 0}}, "train.steps_per_execution"),
        ({"data": {"val_size": 70000}}, "data.val_size"),
        ({"data": {"train_size": 58000}}, "data.train_size"),
        ({"model": {"latnt_dim": 2}}, "model.latnt_dim"),
        ({"trian": {}}, "trian"),
        ({"model": {"decoder_filters": [16, 8, 4]}}, "model.decoder_filters"),
        ({"plot": {"quantile_low": 0.9, "quantile_high": 0.1}}, "plot.quantile_low"),
        ({"tune": {"workers": 0}}, "tune.workers: must be auto or an integer from 1 to 64 (got 0)"),
        ({"tune": {"threads": "all"}}, "tune.threads: must be auto or an integer from 0 to 256 (got 'all')"),
        ({"train": {"schedule": "step"}}, "train.schedule"),
        ({"train": {"schedule": "plateau", "warmup_epochs": 1}}, "train.warmup_epochs: the plateau schedule"),
        ({"train": {"final_lr_fraction": 0.1}}, "train.final_lr_fraction: only the cosine schedule decays"),
        ({"train": {"schedule": "cosine", "warmup_epochs": 30}}, "train.warmup_epochs (30) must be below"),
        ({"train": {"schedule": "cosine", "final_lr_fraction": 1.5}}, "train.final_lr_fraction"),
        ({"train": {"plateau_factor": 1}}, "train.plateau_factor"),
        ({"train": {"early_stopping": -1}}, "train.early_stopping"),
        ({"train": {"kl_warmup_epochs": 30}}, "train.kl_warmup_epochs (30) must be below train.epochs (30)"),
        ({"train": {"free_bits": -0.5}}, "train.free_bits"),
    ],
)
def test_bad_value_is_refused_naming_the_key(raw, key):
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert key in str(error.value)
    assert "\n" not in str(error.value)


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML"):
        load_params(path)


def test_flatten_uses_dotted_keys():
    flat = flatten(parse_params({"train": {"epochs": 3}}))
    assert flat["train.epochs"] == 3
    assert flat["base.tracking.experiment"] == "fashion-mnist-vae"
    assert flat["model.encoder_filters"] == [32, 64]


def test_a_password_in_params_yaml_is_refused_without_showing_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tune:\n  storage: postgresql+psycopg2://optuna:hunter2@db:5432/optuna\n")
    with pytest.raises(ParamsError, match=r"params.yaml: tune.storage: the URL holds a password") as caught:
        load_params(path)
    assert "hunter2" not in str(caught.value)


def test_redact_hides_only_the_password():
    from pipeline.redact import redact, redact_text

    assert (
        redact("postgresql+psycopg2://optuna:p:w@db:5432/x") == "postgresql+psycopg2://optuna:***@db:5432/x"
    )
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact("optuna/journal.log") == "optuna/journal.log"
    assert redact_text("to http://bob:pw@h:1/api failed") == "to http://bob:***@h:1/api failed"
