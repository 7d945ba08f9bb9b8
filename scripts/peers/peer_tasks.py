"""No-op jobs for Celery and Dramatiq, as `scripts/bench peers` runs them.

Each job only counts itself in Redis (INCR), so the benchmark can see when all are done:
a round trip of tens of microseconds, against the milliseconds these frameworks spend per
job. Both acknowledge after the job (Celery `acks_late`, Dramatiq's default), as longshore
does.
"""

import os

import redis

AMQP_URL = os.environ.get("PEERS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS_URL = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = "longshore-bench-peers-done"
counter = redis.Redis.from_url(REDIS_URL)

# --- Celery ---
from celery import Celery  # noqa: E402

celery_app = Celery("peer_tasks", broker=AMQP_URL.replace("%2f", ""))
celery_app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("PEERS_PREFETCH_MULTIPLIER", "4")),
    task_default_queue="longshore-bench-celery",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@celery_app.task(name="noop")
def celery_noop(n):
    counter.incr(COUNTER)


# --- Dramatiq ---
import dramatiq  # noqa: E402
from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402

dramatiq.set_broker(RabbitmqBroker(url=AMQP_URL))


@dramatiq.actor(queue_name="longshore-bench-dramatiq", max_retries=0)
def dramatiq_noop(n):
    counter.incr(COUNTER)
