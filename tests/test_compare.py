"""Comparing runs as people do: the MLflow UI in a real browser, the HTML report, DVC's views.

Screenshots go to `test-artifacts/` (or `$TEST_ARTIFACTS`) for a person to look at.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
from scipy.stats import ttest_ind

from pipeline import environment
from pipeline.figures import NAMES as FIGURES
from pipeline.params import load_params
from pipeline.selection import beats
from pipeline.tracking.store import default_store_uri
from tests.helpers import SMALL_NAME, free_port, run, run_queue, serving, set_param, store

# One worker runs them all (pytest-xdist's loadgroup), so the module's project is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("compare")]


@pytest.fixture(scope="module")
def repo(reproduced) -> Path:
    """Two real short pipeline runs: `dvc repro` at latent dim 2, then `dvc exp run` at 3."""
    path = reproduced("compare")
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "baseline run"], path)
    run(["dvc", "exp", "run", "-S", "model.latent_dim=3", "--name", "wide"], path)
    return path


def trained_runs(repo: Path) -> dict[str, mlflow.entities.Run]:
    """The two training runs, by latent dim."""
    client = store(repo)
    experiment = client.get_experiment_by_name("fashion-mnist-vae")
    runs = client.search_runs([experiment.experiment_id], "tags.`pipeline.stage` = 'train'")
    return {r.data.params["model.latent_dim"]: r for r in runs}


@pytest.fixture(scope="module")
def mlflow_ui(repo):
    """The README's `mlflow ui` command on a free loopback port; yields its address."""
    port = free_port()
    command = ["mlflow", "ui", "--backend-store-uri", default_store_uri(repo), "--host", "127.0.0.1"]
    address = f"http://127.0.0.1:{port}"
    with serving([*command, "--port", str(port)], f"{address}/health", "mlflow ui", cwd=repo):
        yield address


# The compare view's metrics are two virtualised grids, names and values, whose cells align by
# their `top`: the values of the metric named `key`, in column order (null if not rendered).
METRIC_CELLS = """key => {
  const links = [...document.querySelectorAll('a[title="Plot chart"]')];
  const link = links.find(a => a.textContent.trim() === key);
  if (!link) return null;
  const cell = link.parentElement;
  const section = cell.closest('.du-bois-light-collapse-content-box');
  return [...section.querySelectorAll('.ReactVirtualized__Grid')].filter(g => !g.contains(cell))
    .flatMap(g => [...g.querySelectorAll('div[style]')])
    .filter(c => c.style.top === cell.style.top && c.children.length <= 1)
    .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
    .map(c => c.textContent.trim());
}"""


# A node of the Models tab's column picker, an Ant Design tree, by its title.
COLUMN = ".du-bois-light-tree-treenode:has(span[title='{}'])"


def row_values(page, key: str) -> list[str]:
    """The cells after `key` in the comparison table row that `key` heads."""
    for text in page.get_by_role("row").filter(has_text=key).all_inner_texts():
        first, *values = text.split()
        if first == key:
            return values
    raise AssertionError(f"no row headed {key!r} on the page")


def test_mlflow_ui_compares_two_runs(repo, mlflow_ui, pages, artifacts):
    runs = trained_runs(repo)
    assert set(runs) == {"2", "3"}
    assert runs["2"].info.run_name == f"latent 2, lr 0.001, {SMALL_NAME}, seed 42"
    assert runs["3"].info.run_name == f"latent 3, lr 0.001, {SMALL_NAME}, seed 42 · wide"
    experiment_id = runs["2"].info.experiment_id
    errors: list[str] = []
    page = pages(errors, viewport={"width": 1400, "height": 2200})

    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs")
    for tracked in runs.values():
        page.get_by_text(tracked.info.run_name, exact=True).wait_for(timeout=60_000)
    rows = page.get_by_role("checkbox", name="Press Space to toggle row selection")
    assert rows.count() == 2
    for i in range(2):
        rows.nth(i).check()
    page.get_by_role("button", name="Compare", exact=True).click()

    page.get_by_text("Comparing 2 Runs").wait_for(timeout=60_000)
    page.get_by_text("Run details").wait_for()
    for tracked in runs.values():
        assert page.get_by_text(tracked.info.run_id).count() >= 1
    page.get_by_role("switch", name="Parameters - Show diff only").click()  # as a person would
    assert sorted(row_values(page, "model.latent_dim")) == ["2", "3"]
    first_cells = [text.split()[0] for text in page.get_by_role("row").all_inner_texts() if text.strip()]
    assert "base.seed" not in first_cells  # the same in both runs, so hidden
    for key in ("knn_accuracy", "loss/val"):
        shown = page.evaluate(METRIC_CELLS, key)
        assert sorted(shown) == sorted(f"{r.data.metrics[key]:.4g}" for r in runs.values()), key
    page.screenshot(path=artifacts / "mlflow_compare_runs.png")

    # The chart view: each quantity's train and validation curves in one section. Sections
    # below the fold are drawn only when scrolled to (each latent unit's KL has one), so the
    # view's own search narrows it to one quantity at a time, as a person would.
    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART")
    search = page.get_by_placeholder("Search metric charts")
    for quantity in ("loss", "kl"):
        search.fill(f"{quantity}/")
        page.get_by_text(f"{quantity}/val", exact=True).first.wait_for(timeout=60_000)
        assert page.get_by_text(f"{quantity}/train", exact=True).count() >= 1
        page.screenshot(path=artifacts / f"mlflow_chart_view_{quantity}.png")
    assert errors == []


def test_run_page_steps_through_the_pictures_logged_by_epoch(repo, mlflow_ui, pages, artifacts):
    """A person opens a run's charts and moves an image card's step slider: the picture changes."""
    tracked = trained_runs(repo)["2"]
    errors: list[str] = []
    page = pages(errors, viewport={"width": 1400, "height": 1400})
    page.goto(
        f"{mlflow_ui}/#/experiments/{tracked.info.experiment_id}/runs/{tracked.info.run_id}/model-metrics"
        "?workflowType=machine_learning"
    )
    page.get_by_placeholder("Search metric charts").fill("reconstructions")  # the image cards' section
    title = page.get_by_text("reconstructions", exact=True)
    title.wait_for(timeout=60_000)
    card = page.locator("div").filter(has=title).filter(has=page.get_by_role("slider")).last  # the innermost
    picture, slider = card.locator("img"), card.get_by_role("slider")
    assert "step%2B0%2B" in picture.get_attribute("src")  # the first epoch's, at first
    assert (slider.get_attribute("aria-valuemin"), slider.get_attribute("aria-valuemax")) == ("0", "1")
    page.screenshot(path=artifacts / "mlflow_epoch_images_step0.png")
    slider.focus()
    page.keyboard.press("ArrowRight")
    card.locator("img[src*='step%2B1%2B']").wait_for(timeout=30_000)  # the next epoch's picture
    assert slider.get_attribute("aria-valuenow") == "1"
    assert picture.evaluate("image => image.decode().then(() => image.naturalWidth)") > 0  # it loads
    page.screenshot(path=artifacts / "mlflow_epoch_images_step1.png")
    assert errors == []


def test_compare_report_opens_offline_with_every_image(repo, pages, artifacts):
    runs = trained_runs(repo)
    report = repo / "reports/compare.html"
    result = run(["python", "-m", "pipeline.compare", runs["2"].info.run_id, "wide"], repo)
    assert "compare: 2 runs of 2 configurations in reports/compare.html" in result.stdout

    errors: list[str] = []
    page = pages(errors, viewport={"width": 1300, "height": 900})
    # Offline: any request beyond the file itself fails.
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort()
    )
    page.goto(report.as_uri())
    images = page.evaluate("Array.from(document.images, i => [i.alt, i.complete && i.naturalWidth > 0])")
    assert len(images) == 2 + 6 * 2  # the overlaid curves, the plane, then six figures per run
    assert [alt for alt, loaded in images if not loaded] == []
    differ = page.locator("#params tr.differs td:first-child").all_inner_texts()
    assert differ == ["model.latent_dim"]
    # One run of each configuration: its value, n = 1, and no best, since one seed tells no noise.
    test_loss = page.locator("#metrics tr", has_text="test_loss").first
    cells = test_loss.locator("td.num").all_inner_texts()
    assert cells == [f"{runs[k].data.metrics['test_loss']:.5g}" for k in ("2", "3")]
    assert test_loss.locator("td.best").count() == 0
    assert test_loss.locator("td.verdict").inner_text() == "no test: n = 1"
    headers = page.locator("#metrics th").all_inner_texts()
    assert headers[1:] == ["better", "model.latent_dim 2 (n = 1)", "model.latent_dim 3 (n = 1)", "verdict"]
    # One registered version per trained run: run, model, version, aliases, the promote command.
    # Latent 3 took `champion` only if its validation loss beat latent 2's beyond noise.
    losses = {k: runs[k].data.metrics["val_loss"] for k in ("2", "3")}
    tracking = load_params(repo / "params.yaml").base.tracking
    better, _ = beats([losses["3"]], [losses["2"]], sd=tracking.champion_sd, level=tracking.champion_level)
    champion = runs["3"] if better else runs["2"]
    registered = [row.split("\t") for row in page.locator("#registry tr").all_inner_texts()[1:]]
    assert [row[0] for row in registered] == [runs["2"].info.run_name, runs["3"].info.run_name]
    assert [row[0] for row in registered if row[3].strip() == "champion"] == [champion.info.run_name]
    assert "set_registered_model_alias('fashion-mnist-vae', 'champion', '2')" in registered[1][4]
    page.screenshot(path=artifacts / "compare_report.png", full_page=True)
    assert errors == []

    (logged,) = store(repo).search_runs(
        [runs["2"].info.experiment_id], "tags.`pipeline.stage` = 'compare'", max_results=5
    )
    assert logged.data.tags["compare.run_ids"] == f"{runs['2'].info.run_id},{runs['3'].info.run_id}"
    assert [a.path for a in store(repo).list_artifacts(logged.info.run_id)] == ["compare.html"]


def test_printed_link_opens_the_model_training_view(repo, mlflow_ui, pages, artifacts, tmp_path):
    report = tmp_path / "best.html"
    env = {"MLFLOW_TRACKING_URI": mlflow_ui}  # the UI's own server, as a team's would be
    result = run(["python", "-m", "pipeline.compare", "--best", "1", "--output", str(report)], repo, env=env)
    link = re.search(r"^compare: logged to MLflow run \w+: (\S+)$", result.stdout, re.MULTILINE)[1]
    assert link.startswith(f"{mlflow_ui}/#/experiments/") and link.endswith("?workflowType=machine_learning")

    errors: list[str] = []
    page = pages(errors, viewport={"width": 1300, "height": 900})
    page.goto(link)
    page.get_by_text("compare: latent", exact=False).first.wait_for(timeout=60_000)  # the report run
    page.get_by_text("Model registry", exact=True).wait_for()  # the model-training view's menu
    assert page.get_by_text("Evaluation runs", exact=True).count() == 0  # the GenAI view's
    page.screenshot(path=artifacts / "mlflow_printed_link.png")

    fresh = pages(errors, viewport={"width": 1300, "height": 900})
    fresh.goto(link.removesuffix("?workflowType=machine_learning"))  # what a bare link opens
    fresh.get_by_text("Evaluation runs", exact=True).wait_for(timeout=60_000)
    assert errors == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-exp"], "'no-such-exp' is neither a run id nor a DVC experiment name"),
        (["--best", "0"], "--best must be at least 1"),
        ([], "name runs, or give --best N"),
        (["--study", "nowhere"], "no Optuna study named 'nowhere'"),
    ],
)
def test_compare_refuses_bad_input_and_logs_nothing(repo, args, message):
    before = len(store(repo).search_runs([trained_runs(repo)["2"].info.experiment_id], max_results=1000))
    result = run(["python", "-m", "pipeline.compare", *args], repo, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    after = len(store(repo).search_runs([trained_runs(repo)["2"].info.experiment_id], max_results=1000))
    assert after == before


def test_dvc_views_show_curves_figures_and_key_columns(repo, tmp_path):
    diff = run(["dvc", "plots", "diff", "HEAD", "wide", "--json", "-o", str(tmp_path / "diff")], repo)
    plots = json.loads(diff.stdout)["data"]
    figures = [f"plots/figures/{name}" for name in FIGURES]
    curves = [
        "Loss per epoch",
        "Reconstruction and KL per epoch",
        "Rate and distortion at each epoch (validation)",
        "Test reconstruction loss by class",
    ]
    assert sorted(plots) == sorted(curves + figures)  # each drawn once, none as a raw-file chart
    for name in curves:
        assert plots[name][0]["revisions"] == ["HEAD", "wide"]
    for name in figures:
        assert [entry["revisions"] for entry in plots[name]] == [["HEAD"], ["wide"]]
    run(["dvc", "plots", "show", "-o", str(tmp_path / "show")], repo)
    assert (tmp_path / "show/index.html").stat().st_size > 1000

    table = run(["dvc", "exp", "show", "--only-changed", "--drop", ".*/.*", "--csv"], repo).stdout
    columns = next(csv.reader(io.StringIO(table)))
    assert {"model.latent_dim", "test_loss", "test_iw_nll", "knn_accuracy", "val_loss"} <= set(columns)
    assert not {"plot.dpi", "train.epochs", "models/vae.keras"} & set(columns)


def test_every_training_run_records_its_environment_and_system_metrics(repo):
    client = store(repo)
    lock_sha256 = environment.file_sha256(repo / "uv.lock")
    for tracked in trained_runs(repo).values():
        tags = tracked.data.tags
        for package in ("python", "tensorflow", "keras", "mlflow", "dvc", "optuna", "numpy"):
            assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", tags[f"env.{package}"]), (package, tags)
        assert tags["env.keras"] == version("keras")
        assert tags["env.lock_sha256"] == lock_sha256
        assert tags["env.cpu"] == environment.cpu_info()["model"]
        assert tags["env.cores"] == str(os.cpu_count())
        assert float(tags["env.memory_gib"]) > 0
        assert tags["env.os"] and tags["env.gpu"]
        logged = client.list_artifacts(tracked.info.run_id, "environment")
        assert [a.path for a in logged] == ["environment/uv.lock"]
        # MLflow's own monitor, sampled through training (every 2 s by default; these trainings
        # take seconds, a default one minutes: 220 samples on this machine).
        keys = set(tracked.data.metrics)
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
        assert any(key.startswith("system/disk_usage") for key in keys)
        assert client.get_metric_history(tracked.info.run_id, "system/system_memory_usage_megabytes")
    # The first ran at the commit (its outputs being written do not count); the second with
    # `-S model.latent_dim=3`, a params.yaml that differs from the commit.
    assert {k: r.data.tags["git.dirty"] for k, r in trained_runs(repo).items()} == {"2": "false", "3": "true"}


def test_a_run_on_a_fresh_clone_is_clean_and_an_edit_makes_it_dirty(repo, tmp_path):
    """Slow: two whole `dvc repro` runs in a fresh clone, which has no DVC cache to restore from."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert (clone / "dvc.lock").is_file() and (clone / "metrics/train.json").is_file()
    env = {"MLFLOW_TRACKING_URI": default_store_uri(clone)}
    run(["dvc", "repro"], clone, env=env)  # no cache here: every stage runs, rewriting its outputs
    assert run(["git", "status", "--porcelain"], clone).stdout.strip()  # outputs differ, as they will
    experiment_id = store(clone).get_experiment_by_name("fashion-mnist-vae").experiment_id
    (first,) = store(clone).search_runs([experiment_id], "tags.`pipeline.stage` = 'train'")
    assert first.data.tags["git.dirty"] == "false"
    assert "uncommitted" not in first.data.tags["mlflow.note.content"]

    set_param(clone, "train", "epochs", 1)
    run(["dvc", "repro"], clone, env=env)
    latest = store(clone).search_runs(
        [experiment_id], "tags.`pipeline.stage` = 'train'", order_by=["attributes.start_time DESC"]
    )[0]
    assert latest.info.run_id != first.info.run_id
    assert latest.data.tags["git.dirty"] == "true"
    assert "with uncommitted changes" in latest.data.tags["mlflow.note.content"]


def test_a_changed_lock_makes_every_stage_stale(repo, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    with open(clone / "uv.lock", "a") as lock:
        lock.write("# an upgrade\n")
    status = json.loads(run(["dvc", "status", "--json"], clone).stdout)
    for stage in ("prepare", "train", "evaluate", "plot"):
        changed = {
            k: v
            for entry in status[stage]
            if isinstance(entry, dict)
            for k, v in entry.get("changed deps", {}).items()
        }
        assert changed.get("uv.lock") == "modified", (stage, status[stage])


def test_system_metrics_tab_shows_charts(repo, mlflow_ui, pages, artifacts):
    tracked = trained_runs(repo)["2"]
    errors: list[str] = []
    page = pages(errors, viewport={"width": 1400, "height": 1200})
    route = f"experiments/{tracked.info.experiment_id}/runs/{tracked.info.run_id}/system-metrics"
    page.goto(f"{mlflow_ui}/#/{route}?workflowType=machine_learning")
    try:
        # Each chart is titled by its metric, "system/" dropped (the legend, which has the key
        # whole, is drawn only for charts in view).
        page.get_by_role("heading", name="cpu_utilization_percentage").wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        charts = page.locator(".js-plotly-plot").count()
        assert charts >= 3, charts  # CPU, memory and disk at least
        assert page.get_by_text("System metrics (0)").count() == 0
    finally:
        page.screenshot(path=artifacts / "mlflow_system_metrics.png")  # what it showed, pass or fail
    assert errors == []


def test_replicates_queued_through_dvc_are_grouped_with_their_spread(repo, mlflow_ui, pages, artifacts):
    """Slow: four pipelines through DVC's queue, two at a time (two more seeds of each of two
    configurations, the README's commands), then the report and MLflow's UI in Chromium."""
    # The README's commands: two more seeds of each configuration, one thread each, two at a time.
    for latent in (2, 3):
        seeds = ["-S", "train.seed=range(1, 3)", "-S", f"model.latent_dim={latent}", "-S", "train.threads=1"]
        run(["dvc", "exp", "run", "--queue", *seeds], repo)
    assert run_queue(repo, jobs=2) == ["Success"] * 4

    experiment_id = trained_runs(repo)["2"].info.experiment_id
    runs = store(repo).search_runs([experiment_id], "tags.`pipeline.stage` = 'train'")
    by_latent = {d: [r for r in runs if r.data.params["model.latent_dim"] == d] for d in ("2", "3")}
    for group in by_latent.values():
        assert sorted(r.data.params["train.seed"] for r in group) == ["1", "2", "42"]
        assert len({r.data.tags["pipeline.config_id"] for r in group}) == 1
        assert len({r.data.metrics["test_loss"] for r in group}) == 3  # the seeds differ...
    # ...and nothing else: the same prepared split for all six (prepare did not re-run).
    assert len({r.inputs.dataset_inputs[0].dataset.digest for r in runs}) == 1
    configs = {d: group[0].data.tags["pipeline.config_id"] for d, group in by_latent.items()}
    assert configs["2"] != configs["3"]

    report = repo / "reports/replicates.html"
    result = run(["python", "-m", "pipeline.compare", "--best", "2", "--output", str(report)], repo)
    assert "compare: 6 runs of 2 configurations" in result.stdout
    val = {d: statistics.fmean(r.data.metrics["val_loss"] for r in group) for d, group in by_latent.items()}
    assert f"compare: validation chose: model.latent_dim {min(val, key=val.get)} [" in result.stdout
    assert "best test_loss" not in result.stdout  # the test set reports on the choice
    losses = {d: [r.data.metrics["test_loss"] for r in group] for d, group in by_latent.items()}
    for d, values in losses.items():
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        assert f"model.latent_dim {d} [" in result.stdout  # named by what sets it apart
        assert (
            "n = 3; val_loss " in result.stdout
            and f"test_loss {mean:.5g} ± {sd:.2g} ({min(values):.4g}..{max(values):.4g})" in result.stdout
        )

    errors: list[str] = []
    page = pages(errors, viewport={"width": 1300, "height": 900})
    page.goto(report.as_uri())
    # --best ranks the configurations on validation: best first.
    chosen = {d: [r.data.metrics["val_loss"] for r in group] for d, group in by_latent.items()}
    row = page.locator("#metrics tr", has_text="val_loss").first
    assert [cell.split("\n")[0] for cell in row.locator("td.num").all_inner_texts()] == [
        f"{statistics.fmean(chosen[d]):.5g} ± {statistics.stdev(chosen[d]):.2g}"
        for d in sorted(chosen, key=lambda d: statistics.fmean(chosen[d]))
    ]
    assert "adjusted over" in row.locator("td.verdict").inner_text()
    # Chosen on validation, so the test set reports, and its row carries Welch's t-test.
    test_row = page.locator("#metrics tr", has_text="test_loss").first
    p = ttest_ind(losses["2"], losses["3"], equal_var=False).pvalue
    if p < 0.05:
        assert test_row.locator("td.best").count() == 1
        assert test_row.locator("td.verdict").inner_text() == f"primary: p = {p:.2g}"
    else:
        assert test_row.locator("td.best").count() == 0
        assert test_row.locator("td.verdict").inner_text() == f"not shown to differ (primary: p = {p:.2g})"
    assert page.locator("#per-run tr").first.locator("th").count() == 1 + 6  # every run, folded
    differ = page.locator("#params tr.differs td:first-child").all_inner_texts()
    assert differ == ["model.latent_dim", "train.seed", "train.threads"]
    page.screenshot(path=artifacts / "compare_replicates.png", full_page=True)

    # MLflow's runs list groups replicates by the tag, with each group's average.
    ui = pages(errors, viewport={"width": 1600, "height": 1000})
    ui.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    ui.get_by_text(f"latent 2, lr 0.001, {SMALL_NAME}, seed 1", exact=False).first.wait_for(timeout=60_000)
    if ui.get_by_role("button", name="Close").count():  # the assistant's panel, when it is open
        ui.get_by_role("button", name="Close").first.click()
    ui.get_by_role("button", name="Columns", exact=True).click()
    for column in ("Dataset", "Source", "test_loss"):  # off, off (room for the metric), on
        ui.get_by_placeholder("Search columns").fill(column)  # the match's title is then blank
        node = ui.locator(".du-bois-light-tree-treenode").filter(has_text=re.compile(rf"^{column}$"))
        node.locator(".du-bois-light-tree-checkbox").first.click()
    ui.keyboard.press("Escape")
    ui.get_by_role("button", name="Group by").click()
    ui.get_by_role("menuitemcheckbox", name="pipeline.config_id").click()
    ui.keyboard.press("Escape")
    for config in configs.values():
        ui.get_by_text(f"Group: {config}").wait_for(timeout=30_000)
    shown = [float(v) for v in re.findall(r"([\d.]+) \(average\)", ui.locator("body").inner_text())]
    averages = [statistics.fmean(values) for values in losses.values()]
    assert sorted(shown) == pytest.approx(sorted(averages))
    ui.screenshot(path=artifacts / "mlflow_runs_grouped.png")
    assert errors == []


def test_models_tab_names_every_model_with_its_test_loss(repo, mlflow_ui, pages, artifacts):
    client = store(repo)
    experiment_id = trained_runs(repo)["2"].info.experiment_id
    models = client.search_logged_models(experiment_ids=[experiment_id])
    runs = {r.info.run_id: r for r in client.search_runs([experiment_id], "tags.`pipeline.stage` = 'train'")}
    assert len(models) == len(runs) and len({m.name for m in models}) == len(models)
    for model in models:
        tracked = runs[model.source_run_id]
        seed, latent = tracked.data.params["train.seed"], tracked.data.params["model.latent_dim"]
        assert model.name == f"vae-latent{latent}-seed{seed}-{tracked.data.tags['pipeline.config_id']}"

    errors: list[str] = []
    page = pages(errors, viewport={"width": 1600, "height": 1000})
    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/models?workflowType=machine_learning")
    page.get_by_text(models[0].name).wait_for(timeout=60_000)
    if page.get_by_role("button", name="Close").count():  # the assistant's panel, when it is open
        page.get_by_role("button", name="Close").first.click()
    page.get_by_role("button", name="Columns", exact=True).click()
    for title in ("No dataset", "Parameters", "Dataset", "Logged from"):  # off: every metric, ...
        page.locator(COLUMN.format(title) + " .du-bois-light-tree-checkbox").first.click()
    page.locator(COLUMN.format("No dataset") + " .du-bois-light-tree-switcher").first.click()
    page.locator(COLUMN.format("test_loss") + " .du-bois-light-tree-checkbox").first.click()  # ...but one
    page.keyboard.press("Escape")
    page.get_by_role("columnheader", name="test_loss").wait_for()
    shown = page.locator("body").inner_text()
    for model in models:
        assert model.name in shown
        assert repr(runs[model.source_run_id].data.metrics["test_loss"]) in shown
    page.screenshot(path=artifacts / "mlflow_models_tab.png")
    assert errors == []
