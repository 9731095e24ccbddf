"""Running a stage or command: a user's mistake becomes one line and exit 2; SIGTERM ends runs as Ctrl-C
does; Keras' backend, where the stage uses Keras, starts first (TensorFlow without its start-up notices)."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from pipeline.params import PipelineError

STOPPED = threading.Event()  # set by SIGTERM or Ctrl-C; see `interrupt`
_deferred = 0  # how deep the main thread (where Python runs handlers) is in `interrupt_at_safe_points`


def interrupt(signum: int, frame: object) -> None:
    """A signal handler that turns SIGTERM and Ctrl-C (SIGINT) into a KeyboardInterrupt.

    Inside `interrupt_at_safe_points` it only sets `STOPPED`: raised at an arbitrary point of
    Keras' or TensorFlow's code, the interrupt can be swallowed by a bare `except:` there (Keras'
    `ops.shape` while tracing a step is one) and come back as an unrelated error with its
    traceback. There the training loop raises it at its next batch's end (`training.StopOnSignal`).

    A second Ctrl-C raises at once, wherever it comes. Later SIGTERMs are ignored, so that the
    cleanup the first starts (ending runs KILLED or FAILED) is not cut short. A second one is
    common: `kill` of a process group reaches a sweep's workers, and then the launcher,
    stopping, sends them another. Cut short, the open run would be ended FINISHED by MLflow's
    exit handler.

    The KeyboardInterrupt can be lost: raised while Python runs a finalizer (a weakref
    callback, a `__del__`), it is dropped. `STOPPED` stays set, and the training loop raises
    it again at its next batch (`training.StopOnSignal`).
    """
    again = STOPPED.is_set()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    STOPPED.set()
    # A second Ctrl-C is a user who will not wait for the batch's end: stop at once.
    if not _deferred or (again and signum == signal.SIGINT):
        raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupt_at_safe_points() -> Iterator[None]:
    """Inside, SIGTERM and Ctrl-C only set `STOPPED` (see `interrupt`); code inside raises it
    at points of its own choosing, and leaving the block raises it if it is still pending."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
    if STOPPED.is_set() and not _deferred:
        raise KeyboardInterrupt("signal")


def _drop_lost_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
    """Python's report of an exception a finalizer could not raise, but not of a lost interrupt:
    that is raised again (see `interrupt`), and its traceback would say nothing."""
    if not (STOPPED.is_set() and isinstance(unraisable.exc_value, KeyboardInterrupt)):
        sys.__unraisablehook__(unraisable)


def catch_sigterm() -> None:
    """Make SIGTERM, and Ctrl-C, interrupt this process through `interrupt`."""
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    sys.unraisablehook = _drop_lost_interrupt


def no_arguments(module: str) -> None:
    """The command line of a stage that takes no arguments: `--help` says what it does, and
    anything else stops it with a usage line and exit status 2."""
    name = sys.modules[module].__spec__.name if module == "__main__" else module
    stage = name.rsplit(".", 1)[-1]
    argparse.ArgumentParser(
        prog=f"python -m {name}",
        description=(sys.modules[module].__doc__ or "").strip(),
        epilog=f"Its settings are in params.yaml, checked before it starts. DVC runs it: dvc repro {stage}",
    ).parse_args()


def run_stage(main: Callable[[], None], *, keras: bool = False) -> None:
    """Run a stage's `main`: a PipelineError becomes one line on stderr and exit status 2;
    SIGTERM, like Ctrl-C, interrupts it so that open runs are closed as KILLED.

    A `main` that takes no arguments reads its settings from params.yaml alone: its command
    line answers `--help` and refuses anything else before any work (`no_arguments`). One that
    takes `argv` parses its own.

    With `keras`, Keras' backend (`base.backend`, with `train.threads`) is started first: such a
    stage imports the modules that use Keras inside `main`, so that nothing imports it before.
    `main` finds the backend's tags in `backend.TAGS`.
    """
    if not inspect.signature(main).parameters:
        no_arguments(main.__module__)
    catch_sigterm()
    try:
        if keras:
            from pipeline import backend
            from pipeline.params import load_params

            params = load_params()
            backend.TAGS.update(backend.start(params.base.backend, threads=params.train.threads))
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: recorded as KILLED", file=sys.stderr)
        raise SystemExit(130) from None
