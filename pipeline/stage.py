"""Running a stage or command: a user's mistake becomes one line and exit 2; SIGTERM ends runs as Ctrl-C
does; TensorFlow, where the stage uses it, starts without its start-up notices."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from pipeline.params import PipelineError
from pipeline.quiet import start_tensorflow


def interrupt(signum: int, frame: object) -> None:
    """A signal handler that turns SIGTERM into the KeyboardInterrupt Ctrl-C gives.

    Later SIGTERMs are ignored, so that the cleanup this one starts (ending runs KILLED or
    FAILED) is not cut short. A second one is common: `kill` of a process group reaches a
    sweep's workers, and then the launcher, stopping, sends them another. Cut short, the
    open run would be ended FINISHED by MLflow's exit handler.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(main: Callable[[], None], *, tensorflow: bool = False) -> None:
    """Run a stage's `main`: a PipelineError becomes one line on stderr and exit status 2;
    SIGTERM, like Ctrl-C, interrupts it so that open runs are closed as KILLED.

    With `tensorflow`, TensorFlow is started quietly first: such a stage imports the modules
    that use it inside `main`, so that nothing imports it before.
    """
    signal.signal(signal.SIGTERM, interrupt)
    try:
        if tensorflow:
            start_tensorflow()
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: recorded as KILLED", file=sys.stderr)
        raise SystemExit(130) from None
