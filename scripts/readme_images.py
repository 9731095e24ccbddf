"""Regenerate the README's pictures from the pipeline's own outputs.

    python scripts/readme_images.py                 # the 2 configurations of lowest mean val_loss
    python scripts/readme_images.py RUN_OR_EXP ...  # or the runs named (any `pipeline.compare` arguments)

Run it after `dvc repro`: it copies the default run's latent scatter and grid, makes a
comparison report with `python -m pipeline.compare`, and photographs its metrics and curves
in headless Chromium. The PNGs are scaled down to stay small in git.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs/images"
REPORT = ROOT / "reports/readme_compare.html"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WIDTH = 700  # pixels of a README picture


def shrink(source: Path, target: Path, width: int = WIDTH) -> None:
    """Scale to `width` pixels wide and save as a PNG of 256 colours, a third of the size."""
    image = Image.open(source).convert("RGB")
    height = round(image.height * width / image.width)
    small = image.resize((width, height), Image.LANCZOS)
    small.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)
    print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} KiB")


def main(argv: list[str]) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in ("latent_scatter", "latent_grid"):
        shrink(ROOT / f"plots/figures/{name}.png", IMAGES / f"{name}.png")

    compare_args = argv or ["--best", "2"]
    command = [sys.executable, "-m", "pipeline.compare", *compare_args, "--output", str(REPORT)]
    subprocess.run(command, cwd=ROOT, check=True)
    screenshot = REPORT.with_suffix(".png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(REPORT.as_uri())
        page.screenshot(path=screenshot, full_page=True)
        metrics = page.locator("h2", has_text="Metrics").bounding_box()["y"]  # from the metrics down
        browser.close()
    full = Image.open(screenshot)
    full.crop((0, metrics - 10, full.width, min(full.height, metrics + 1500))).save(screenshot)
    shrink(screenshot, IMAGES / "compare_report.png", width=900)


if __name__ == "__main__":
    main(sys.argv[1:])
