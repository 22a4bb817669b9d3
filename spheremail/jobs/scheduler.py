"""The in-process APScheduler: it only ticks; the database decides what runs (see jobs/__init__)."""
from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


def start_scheduler(app, interval_seconds: int = 60) -> BackgroundScheduler:
    """Start a background scheduler that calls :func:`spheremail.jobs.tick` every minute."""
    from spheremail.jobs import load_jobs, tick

    load_jobs()

    def _tick():
        with app.app_context():
            try:
                tick()
            except Exception:  # noqa: BLE001 - keep ticking; the next minute may succeed
                log.exception("scheduler tick failed")

    scheduler = BackgroundScheduler(daemon=True, timezone="UTC")
    # coalesce + generous grace: a process that was asleep ticks once, not once per missed minute.
    scheduler.add_job(_tick, "interval", seconds=interval_seconds, id="spheremail-tick",
                      coalesce=True, max_instances=1, misfire_grace_time=3600)
    scheduler.start()
    app.extensions["spheremail_scheduler"] = scheduler
    return scheduler
