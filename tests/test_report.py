"""The comparison report's pure parts: grouping replicates, spread, Welch's verdict, what differs,
and safe HTML."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure
from scipy import stats
from scipy.stats import ttest_ind

from pipeline.charts import figure_png
from pipeline.report import (
    REPORTING,
    Group,
    RunView,
    choice_line,
    group_runs,
    param_rows,
    plane_line,
    plane_rows,
    render,
    summary_lines,
)
from pipeline.stats import holm, spread, uncertainty, verdicts


def small_png() -> bytes:
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    return figure_png(fig)


def view(
    name: str, latent_dim: int, test_loss: float, *, seed: int = 42, figures: bool = True, code: str = "c0de"
) -> RunView:
    return RunView(
        run_id=f"{latent_dim:016d}{seed:016d}",
        name=f"{name}, seed {seed}",
        config=f"config-{latent_dim}",
        code=code,
        kind="trained model" if figures else "sweep trial",
        description="`dvc exp run` at commit `abc`",
        params={
            "model.latent_dim": str(latent_dim),
            "model.encoder_filters": "[32, 64]",
            "train.epochs": "30",
            "train.seed": str(seed),
        },
        metrics={"test_loss": test_loss, "knn_accuracy": 0.5 + latent_dim / 100, "test_kl": 6.0},
        curves={"loss/train": [300.0, 280.0], "loss/val": [290.0, 285.0]},
        figures={"latent_scatter.png": small_png()} if figures else {},
    )


def test_runs_group_by_configuration_in_order_of_first_appearance():
    runs = [view("a", 2, 263.0), view("b", 16, 242.0), view("a", 2, 264.0, seed=1)]
    groups = group_runs(runs)
    assert [g.name for g in groups] == ["model.latent_dim 2", "model.latent_dim 16"]  # what sets them apart
    assert group_runs(runs[:1])[0].name == "a"  # alone: its run's name, the seed left out
    assert [len(g.runs) for g in groups] == [2, 1]
    assert groups[0].values("test_loss") == [263.0, 264.0]


def test_spread_is_n_mean_sample_sd_and_range_and_a_single_run_has_no_sd():
    cell = spread([263.0, 264.0, 265.5])
    assert (cell.n, cell.low, cell.high) == (3, 263.0, 265.5)
    assert cell.mean == pytest.approx(264.1666667) and cell.sd == pytest.approx(1.2583057)
    assert str(cell) == "264.17 ± 1.3"
    assert str(spread([263.31085205078125])) == "263.31"  # n = 1: no ±
    assert spread([]) is None


def configurations(**samples: list[list[float]]) -> list[Group]:
    """Groups of runs whose metrics are the given samples: `test_loss=[[...], [...]]`, one list
    per configuration."""
    n = len(next(iter(samples.values())))
    groups = []
    for i in range(n):
        runs = []
        for j in range(max(len(values[i]) for values in samples.values())):
            run = view(f"c{i}", i, 0.0, seed=j)
            run.metrics = {key: values[i][j] for key, values in samples.items() if j < len(values[i])}
            runs.append(run)
        groups.append(Group(f"config-{i}", runs))
    return groups


def named(groups: list[Group]) -> list[Group]:
    """The same groups, named as `compare` names them (by the setting that sets them apart)."""
    return group_runs([run for group in groups for run in group.runs])


def test_the_primary_metric_decides_and_the_other_rows_are_adjusted_for_their_number():
    apart, close = [241.1, 241.9, 242.4], [263.0, 264.1, 265.3]
    overlapping = [263.5, 264.0, 262.9]
    p = ttest_ind(apart, close, equal_var=False).pvalue
    decided = verdicts(["val_loss"], configurations(val_loss=[close, apart]))
    assert decided["val_loss"] == (1, f"primary: p = {p:.2g}")
    p = ttest_ind(close, overlapping, equal_var=False).pvalue
    assert p > 0.05
    assert verdicts(["val_loss"], configurations(val_loss=[close, overlapping]))["val_loss"] == (
        None,
        f"not shown to differ (primary: p = {p:.2g})",
    )

    # Three other rows that each differ at p < 0.05: none survives the adjustment for three.
    rows = {key: [[1.0, 1.2, 1.1], [1.3, 1.45, 1.4]] for key in ("test_loss", "test_iw_nll", "loss/val")}
    groups = configurations(val_loss=[close, apart], **rows)
    raw = ttest_ind([1.0, 1.2, 1.1], [1.3, 1.45, 1.4], equal_var=False).pvalue
    assert raw < 0.05 < 3 * raw
    decided = verdicts(["val_loss", *rows], groups)
    assert decided["val_loss"][0] == 1
    for key in rows:
        assert decided[key] == (
            None,
            f"not shown to differ (p = {min(1, 3 * raw):.2g}, adjusted over 3 rows)",
        )
    # Runs that `--best` picked by validation: the test set reports, and carries the test
    # unadjusted, so the same p that fell to the adjustment above now shows config 0 lower on
    # test, though validation put config 1 first.
    reported = verdicts(["val_loss", *rows], groups, primary_order=REPORTING)
    assert reported["test_loss"] == (0, f"primary: p = {raw:.2g}")
    assert "adjusted over 3 rows" in reported["val_loss"][1]


def test_holm_multiplies_the_smallest_p_by_m_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_no_test_without_noise_and_no_best_where_no_side_is_better():
    close, apart = [263.0, 264.1, 265.3], [241.1, 241.9, 242.4]
    one = verdicts(["test_loss"], configurations(test_loss=[[263.3], [241.9]]))
    assert one["test_loss"] == (None, "no test: n = 1")  # no noise known
    flat = verdicts(["test_loss"], configurations(test_loss=[[250.0, 250.0], [251.0, 251.0]]))
    assert flat["test_loss"] == (None, "no test: no spread")  # not "p = 0"
    higher = verdicts(["knn_accuracy"], configurations(knn_accuracy=[[0.61, 0.62, 0.6], [0.8, 0.81, 0.79]]))
    assert higher["knn_accuracy"][0] == 1  # higher is better
    for key in ("test_kl", "learning_rate", "best_epoch", "system/cpu_utilization_percentage"):
        assert verdicts([key], configurations(**{key: [close, apart]}))[key] == (None, "")
    assert verdicts(["test_loss"], configurations(test_loss=[close]))["test_loss"] == (None, "")


def test_params_split_into_differing_and_shared_with_a_configurations_seeds_joined():
    groups = group_runs([view("a", 2, 263.0), view("a", 2, 264.0, seed=1), view("b", 16, 242.0)])
    differ, same = param_rows(groups)
    assert [row["key"] for row in differ] == ["model.latent_dim", "train.seed"]
    assert differ[1]["values"] == ["42, 1", "42"]
    assert [row["key"] for row in same] == ["model.encoder_filters", "train.epochs"]


def test_report_shows_the_spread_marks_a_real_best_and_escapes_names():
    runs = [
        view("<script>alert(1)</script>", 2, loss, seed=s) for s, loss in ((1, 263.0), (2, 264.1), (3, 265.3))
    ]
    runs += [view("b", 16, loss, seed=s) for s, loss in ((1, 241.1), (2, 241.9), (3, 242.4))]
    html = render(group_runs(runs), title="t")
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert html.count("<img") == 1 + 2  # the curves, then one figure per configuration
    assert html.count('class="num best"') == 1  # test_loss, the primary; knn_accuracy has no spread
    assert "264.13 ± 1.2" in html and '<span class="range">263..265.3</span>' in html
    assert html.count("n = 3") >= 2
    assert "<code>dvc exp run</code>" in html  # a description's code spans


def test_two_single_runs_show_no_star_and_say_why():
    html = render(group_runs([view("a", 2, 263.0), view("b", 16, 242.0)]), title="t")
    assert 'class="num best"' not in html
    assert '<td class="verdict">no test: n = 1</td>' in html


def test_report_of_trials_alone_says_how_to_see_figures():
    trials = [view("trial 1", 2, 263.0, figures=False), view("trial 2", 4, 250.0, figures=False)]
    html = render(group_runs(trials), title="t")
    assert "None of these runs has figures" in html
    assert html.count("<img") == 1  # the curves only: no row of empty figure cells


def test_environment_rows_that_differ_are_highlighted_like_params():
    amd, xeon = view("amd", 2, 263.31), view("xeon", 3, 263.83)
    amd.environment = {"cpu": "AMD EPYC", "cpu_isa": "avx2 avx512f", "keras": "3.15.1"}
    xeon.environment = {"cpu": "Intel Xeon", "cpu_isa": "avx2", "keras": "3.15.1"}
    html = render(group_runs([amd, xeon]), title="t")
    environment = html[html.index('<table id="environment">') :]
    environment = environment[: environment.index("</details>")]
    assert '<tr class="differs"><td><code>cpu</code></td>' in environment
    assert '<tr class="differs"><td><code>cpu_isa</code></td>' in environment
    assert "<td>Intel Xeon</td>" in environment
    assert "1 environment rows are the same in every run" in environment  # keras, folded away
    assert 'differs"><td><code>keras' not in environment


def test_runs_without_an_environment_say_so():
    html = render(group_runs([view("a", 2, 263.0), view("b", 16, 242.0)]), title="t")
    assert '<table id="environment">' not in html
    assert "None of these runs recorded its environment" in html


def test_a_configuration_whose_runs_come_from_different_code_says_so():
    runs = [view("a", 2, 263.0), view("a", 2, 264.0, seed=1, code="beef"), view("b", 16, 242.0)]
    lines = summary_lines(group_runs(runs))
    assert any(
        line.startswith("model.latent_dim 2 [config-2]: its runs come from 2 versions of the code")
        for line in lines
    )
    assert not any(
        line.startswith("model.latent_dim 16 [") and "versions of the code" in line for line in lines
    )


def test_a_configuration_with_a_failed_seed_says_so_and_is_never_marked_best():
    steady, unstable = [263.0, 264.1, 265.3], [241.1, 241.9, 242.4]  # the unstable one is far lower
    groups = named(configurations(val_loss=[steady, unstable], test_loss=[steady, unstable]))
    groups[1].failed = {5: "diverged"}
    assert groups[1].seeds == "n = 3 of 4; 1 diverged" and groups[0].seeds == "n = 3"
    decided = verdicts(["val_loss", "test_loss"], groups)
    assert decided["val_loss"] == (None, "no test: every other configuration has a failed seed")
    html = render(groups, title="t")
    assert 'class="num best"' not in html and "(n = 3 of 4; 1 diverged)</th>" in html
    lines = summary_lines(groups)
    assert any(
        line.startswith("model.latent_dim 1 [config-1], n = 3 of 4; 1 diverged; val_loss") for line in lines
    )


def test_best_names_validations_choice_and_reports_test_on_it():
    # Validation puts config 0 first; the test set puts config 1 lower, beyond noise.
    groups = named(configurations(val_loss=[[240.0, 240.2, 240.1], [245.0, 245.3, 245.1]],
                                  test_loss=[[252.0, 252.4, 252.2], [246.0, 246.3, 246.1]]))  # fmt: skip
    lines = summary_lines(groups, chosen=True)
    assert choice_line(groups) in lines and choice_line(groups).startswith(
        "validation chose: model.latent_dim 0 [config-0], mean val_loss 240.1 ± 0.1 (n = 3), "
        "the lowest of every configuration in the experiment"
    )
    assert not any(line.startswith("best ") for line in lines)  # nothing is "best" on test
    p = ttest_ind([252.0, 252.4, 252.2], [246.0, 246.3, 246.1], equal_var=False).pvalue
    assert f"reported on test, test_loss: model.latent_dim 1 (primary: p = {p:.2g})" in lines
    html = render(groups, title="t", chosen=True)
    assert '<p id="choice"><strong>validation chose: model.latent_dim 0' in html


def test_the_test_losss_error_combines_the_seeds_and_the_images():
    groups = configurations(test_loss=[[239.0, 240.0, 241.0]], test_loss_se=[[0.6, 0.6, 0.6]])
    error = uncertainty(groups[0], "test_loss")
    assert error.seeds == pytest.approx(1 / 3**0.5) and error.images == pytest.approx(0.6)
    assert error.combined == pytest.approx((1 / 3 + 0.36) ** 0.5)  # 0.83: not the seeds' 0.58 alone
    # Student's t on the Welch-Satterthwaite degrees of freedom, the images' error counted as known.
    df = 2 * (error.combined / error.seeds) ** 4
    half = stats.t.ppf(0.975, df) * error.combined
    assert df == pytest.approx(8.65, abs=0.01) and error.interval() == pytest.approx((240 - half, 240 + half))
    assert str(error) == (
        f"test_loss 240.00, standard error 0.83 (seeds 0.58, images 0.60); "
        f"95% interval {240 - half:.2f}..{240 + half:.2f}"
    )
    one = uncertainty(configurations(test_loss=[[240.0]], test_loss_se=[[0.6]])[0], "test_loss")
    assert one.interval() is None and str(one).endswith("n = 1, no interval")  # a seed's spread is unknown
    assert (
        uncertainty(configurations(test_loss=[[240.0]])[0], "test_loss") is None
    )  # no per-image error logged
    html = render(groups, title="t")
    assert '<td class="num">0.60</td><td class="num">0.83</td>' in html
    assert f"{240 - half:.2f}..{240 + half:.2f}" in html


def test_a_configuration_whose_runs_mix_thread_counts_or_backends_says_so():
    runs = [
        view("a", 2, 263.0),
        view("a", 2, 264.0, seed=1),
        view("b", 16, 242.0),
        view("b", 16, 243.0, seed=1),
    ]
    runs[0].params["train.threads"], runs[1].params["train.threads"] = "0", "1"
    runs[2].params["train.threads"] = runs[3].params["train.threads"] = "1"
    lines = summary_lines(group_runs(runs))
    assert "model.latent_dim 2 [config-2]: its runs mix train.threads (0, 1), which rounds" in "\n".join(
        lines
    )
    assert not any("model.latent_dim 16 [" in line and "mix train.threads" in line for line in lines)
    runs[2].params["base.backend"], runs[3].params["base.backend"] = "tensorflow", "jax"
    lines = summary_lines(group_runs(runs))
    assert "model.latent_dim 16 [config-16]: its runs mix base.backend (jax, tensorflow), which draws" in (
        "\n".join(lines)
    )


def on_plane(
    view_: RunView, rates: list[float], distortions: list[float], best_epoch: int | None = None
) -> RunView:
    view_.curves = {"kl/val": rates, "reconstruction/val": distortions}
    if best_epoch is not None:
        view_.metrics["best_epoch"] = best_epoch
    return view_


def test_the_plane_places_each_configuration_at_its_seeds_mean_and_says_which_codes_most():
    runs = [
        on_plane(view("a", 16, 241.0, seed=1), [9.0, 20.0], [260.0, 221.0]),
        on_plane(view("a", 16, 242.0, seed=2), [9.0, 22.0], [260.0, 219.0]),
        # Early stopping kept epoch 1 (the first): its point is that epoch's, not the last.
        on_plane(view("b", 2, 263.0, seed=1), [5.0, 6.0, 2.0], [258.0, 257.0, 300.0], best_epoch=1),
        on_plane(view("b", 2, 264.0, seed=2), [5.5, 7.0], [256.0, 259.0]),
    ]
    groups = group_runs(runs)
    rows = plane_rows(groups)
    assert [row["group"].name for row in rows] == ["model.latent_dim 16", "model.latent_dim 2"]  # by rate
    assert (rows[0]["rate"].mean, rows[0]["distortion"].mean) == (21.0, 220.0)
    assert (rows[1]["rate"].mean, rows[1]["distortion"].mean) == (6.5, 258.0)
    assert plane_line(rows) == (
        "model.latent_dim 16 codes the most (rate 21 ± 1.4 nats, distortion 220 ± 1.4); "
        "model.latent_dim 2 the least (rate 6.5 ± 0.71, distortion 258 ± 1.4), "
        "14.5 nats less rate for +38.0 nats of distortion "
        "(means ± sd over n = 2 and 2 seeds; validation, the models kept)"
    )
    html = render(groups, title="plane")
    assert '<table id="plane">' in html and "validation rate against distortion" in html
    assert any(
        line.startswith("rate-distortion: model.latent_dim 16 codes the most")
        for line in summary_lines(groups)
    )
    # A sweep trial confirmed on other seeds sits where those seeds put it, as it is ranked; a
    # two-objective trial's point is the one it recorded.
    searched = on_plane(view("t", 8, 250.0, figures=False), [30.0], [200.0])
    confirming = [on_plane(view("t", 8, 250.0, seed=s, figures=False), [10.0], [235.0]) for s in (43, 44)]
    for run in confirming:
        run.replicate_of = "7"
    confirming[1].metrics.update({"objective_val_rate": 12.0, "objective_val_distortion": 233.0})
    (trial,) = group_runs([searched, *confirming])
    assert trial.plane() == ([10.0, 12.0], [235.0, 233.0])
    # Runs without the curves (from before they were logged) leave the section out.
    assert "<h2>Rate and distortion</h2>" not in render(group_runs([view("c", 2, 263.0)]), title="none")
