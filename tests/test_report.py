"""The comparison report's pure parts: which value is best, what differs, and safe HTML."""

from __future__ import annotations

from matplotlib.figure import Figure

from pipeline.compare import RunView, best_index, figure_png, param_rows, render


def small_png() -> bytes:
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    return figure_png(fig)


def view(name: str, latent_dim: int, test_loss: float, *, figures: bool = True) -> RunView:
    return RunView(
        run_id=f"{latent_dim:032d}",
        name=name,
        kind="trained model" if figures else "sweep trial",
        description="`dvc exp run` at commit `abc`",
        params={"model.latent_dim": str(latent_dim), "train.epochs": "30"},
        metrics={"test_loss": test_loss, "knn_accuracy": 0.5 + latent_dim / 100, "test_kl": 6.0},
        curves={"loss/train": [300.0, 280.0], "loss/val": [290.0, 285.0]},
        figures={"latent_scatter.png": small_png()} if figures else {},
    )


def test_best_is_lowest_except_accuracy_and_active_units_and_never_kl():
    assert best_index("test_loss", [263.3, 241.9]) == 1
    assert best_index("knn_accuracy", [0.67, 0.83]) == 1
    assert best_index("active_units", [2, 8]) == 1
    assert best_index("test_kl", [6.2, 14.2]) is None
    assert best_index("test_loss", [250.0, 250.0]) is None  # a tie chooses nothing
    assert best_index("test_loss", [float("nan"), 260.0, None]) is None  # one real value: nothing to choose


def test_params_split_into_differing_and_shared():
    differ, same = param_rows([view("a", 2, 263.0), view("b", 16, 242.0)])
    assert [row["key"] for row in differ] == ["model.latent_dim"]
    assert differ[0]["values"] == ["2", "16"]
    assert [row["key"] for row in same] == ["train.epochs"]


def test_report_marks_the_best_and_escapes_names():
    html = render([view("<script>alert(1)</script>", 2, 263.0), view("b", 16, 242.0)], title="t")
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert html.count("<img") == 1 + 2  # the overlaid curves, then one figure per run
    assert html.count('class="num best"') == 2  # test_loss and knn_accuracy, both run b; KL none
    assert "<code>dvc exp run</code>" in html  # a description's code spans


def test_report_of_trials_alone_says_how_to_see_figures():
    trials = [view("trial 1", 2, 263.0, figures=False), view("trial 2", 4, 250.0, figures=False)]
    html = render(trials, title="t")
    assert "None of these runs has figures" in html
    assert html.count("<img") == 1  # the curves only: no row of empty figure cells


def test_environment_rows_that_differ_are_highlighted_like_params():
    amd, xeon = view("amd", 2, 263.31), view("xeon", 2, 263.83)
    amd.environment = {"cpu": "AMD EPYC", "cpu_isa": "avx2 avx512f", "keras": "3.15.1"}
    xeon.environment = {"cpu": "Intel Xeon", "cpu_isa": "avx2", "keras": "3.15.1"}
    html = render([amd, xeon], title="t")
    environment = html[html.index('<table id="environment">') :]
    environment = environment[: environment.index("</details>")]
    assert '<tr class="differs"><td><code>cpu</code></td>' in environment
    assert '<tr class="differs"><td><code>cpu_isa</code></td>' in environment
    assert "<td>Intel Xeon</td>" in environment
    assert "1 environment rows are the same in every run" in environment  # keras, folded away
    assert 'differs"><td><code>keras' not in environment


def test_runs_without_an_environment_say_so():
    html = render([view("a", 2, 263.0), view("b", 16, 242.0)], title="t")
    assert '<table id="environment">' not in html
    assert "None of these runs recorded its environment" in html
