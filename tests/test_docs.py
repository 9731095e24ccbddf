"""The README and `docs/` stay true: every relative link and anchor resolves, every
`python -m pipeline.X`, `python bench/X.py` and `bash X.sh` they show exists with the options
shown, every `params.yaml` key they name exists, and the README stays short."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from pipeline.params import read_yaml
from tests.helpers import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]
README_LINES = 200

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"")
INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")  # a span may wrap onto the next line
COMMAND = re.compile(r"python (?:-m (pipeline(?:\.\w+)+)|(bench/\w+\.py))([^|;&)\n]*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[A-Za-z])\b")
SECTIONS = ("base", "data", "model", "train", "evaluate", "plot", "tune")
KEY = re.compile(rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})(?:\.[A-Za-z_]\w*)+(?:\.?\*)?)(?![\w(/-])")
NOT_PARAMS = {"model.sha256"}  # a run's tag: the saved model's digest
SCRIPT = re.compile(r"\bbash ((?:scripts|bench|\.ci)/[\w.]+)")
FILE_SUFFIX = re.compile(r"\.(py|json|yaml|csv|keras|png|md|html|lock|log|npz|sh)$")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


@cache
def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, with GitHub's -1, -2 for repeats."""
    found: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            base = anchor = slug(match.group(1))
            count = 0
            while anchor in found:
                count += 1
                anchor = f"{base}-{count}"
            found.add(anchor)
    return found


def code(text: str, *, python: bool = True) -> list[str]:
    """The lines of every fenced block (Python's only if `python`) and every inline code span."""
    blocks = [body for lang, body in FENCE.findall(text) if python or lang != "python"]
    lines = [line for body in blocks for line in body.replace("\\\n", " ").splitlines()]
    return lines + [span.replace("\n", " ") for span in INLINE_CODE.findall(prose(text))]


def test_the_readme_stays_short_and_maps_every_page():
    text = README.read_text()
    assert len(text.splitlines()) <= README_LINES
    linked = {(README.parent / target).resolve() for target, _ in LINK.findall(prose(text)) if target}
    assert [page.name for page in PAGES if page not in linked] == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_and_anchor_resolves(document):
    broken = []
    for link, source in LINK.findall(prose(document.read_text())):
        target = link or source
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no such anchor in {path.name}")
    assert broken == []


@cache
def help_text(command: str) -> str:
    """What `python <command> --help` prints."""
    args = ["-m", command] if command.startswith("pipeline") else [command]
    result = subprocess.run(
        [sys.executable, *args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{command} --help: {result.stderr[-500:]}"
    return result.stdout


def shown_commands() -> list[tuple[str, str, set[str]]]:
    """(document, command, the options shown after it) for every `python -m pipeline.X` and
    `python bench/X.py` in a code block or span."""
    shown = []
    for document in DOCUMENTS:
        for line in code(document.read_text()):
            for module, script, rest in COMMAND.findall(line):
                shown.append((document.name, module or script, set(OPTION.findall(rest))))
    return shown


def test_every_command_and_option_shown_exists():
    missing = []
    for document, command, options in shown_commands():
        path = ROOT / (command.replace(".", "/") + ".py" if command.startswith("pipeline") else command)
        if not path.is_file():
            missing.append(f"{document}: {command}: no such module or script")
        elif options:
            usage = help_text(command)
            named = set(OPTION.findall(usage))
            missing += [
                f"{document}: {command} {option}" for option in sorted(options) if option not in named
            ]
    assert missing == []


def test_every_shell_script_shown_exists():
    shown = {(document.name, script) for document in DOCUMENTS for line in code(document.read_text())
             for script in SCRIPT.findall(line)}  # fmt: skip
    assert (
        shown
        and [f"{name}: {script}" for name, script in sorted(shown) if not (ROOT / script).is_file()] == []
    )


@cache
def params_has(key: str) -> bool:
    """Whether params.yaml has the dotted key; `train.plateau_*` and `base.tracking.*` name a group."""
    node = read_yaml(ROOT / "params.yaml")
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if last.endswith("*"):
        return isinstance(node, dict) and any(name.startswith(last[:-1]) for name in node)
    return isinstance(node, dict) and last in node


def test_every_params_key_named_exists():
    unknown = set()
    for document in DOCUMENTS:
        for line in code(document.read_text(), python=False):
            for key in KEY.findall(line):
                if not (FILE_SUFFIX.search(key) or key in NOT_PARAMS or params_has(key)):
                    unknown.add(f"{document.name}: {key}")
    assert sorted(unknown) == []
