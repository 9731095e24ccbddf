"""Where a study lives: a journal file for the workers of one machine, or an RDB such as
PostgreSQL for workers on several."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend

from pipeline.params import Tune
from pipeline.tracking import store

JOURNAL = Path("optuna/journal.log")


def storage_url(tune: Tune) -> str:
    """The storage as given, or the default journal file at the repository root."""
    return tune.storage or str(store.repo_root() / JOURNAL)


def open_storage(tune: Tune) -> optuna.storages.BaseStorage:
    """A journal file (safe for processes on one machine) or an RDB such as PostgreSQL (many machines)."""
    url = storage_url(tune)
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    from sqlalchemy.exc import IntegrityError

    # Launchers on several machines meeting a fresh database all create Optuna's tables, and
    # PostgreSQL refuses all but one of them; a moment later the tables are there.
    for wait in (1.0, 2.0):
        try:
            return _rdb_storage(url, tune)
        except IntegrityError:
            time.sleep(wait)
    return _rdb_storage(url, tune)


def _rdb_storage(url: str, tune: Tune) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            heartbeat_interval=tune.heartbeat_interval,
            grace_period=tune.grace_period,
            # A trial whose worker died is marked FAIL and run again, once.
            heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=1),
        )
