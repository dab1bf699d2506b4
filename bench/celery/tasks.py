"""The Celery side of the no-op comparison: one task that does nothing but say when it started.

Broker and result backend are the Redis that bench/celery/run.sh starts (CELERY_BROKER_URL).
"""

import os
import time

from celery import Celery

URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("dap_bench", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop():
    """Returns the wall-clock time (ns) at which the worker began running it."""
    return time.time_ns()
