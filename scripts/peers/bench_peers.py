"""`scripts/bench peers`: no-op jobs through Celery (prefork and threads) and Dramatiq on
the same RabbitMQ as longshore, with the same job count, in interleaved rounds; prints
each round and the medians, with longshore's ratio to each.

A peer's rate is measured from its first finished job to its last (its start-up is not
counted); longshore's comes from the Rust benchmark (`-- longshore-noop`), timed from the
worker's start, so the comparison leans the peers' way.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import peer_tasks

JOBS = int(os.environ.get("BENCH_JOBS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV_BIN = os.path.dirname(sys.executable)


def done():
    return int(peer_tasks.counter.get(peer_tasks.COUNTER) or 0)


def drain(start_worker, enqueue, purge):
    """Enqueues JOBS, starts the worker, and returns jobs/s from first to last finished."""
    purge()
    peer_tasks.counter.set(peer_tasks.COUNTER, 0)
    enqueue()
    worker = start_worker()
    try:
        deadline = time.monotonic() + 600
        first_at = first_count = None
        while True:
            count = done()
            now = time.monotonic()
            if first_at is None and count > 0:
                first_at, first_count = now, count
            if count >= JOBS:
                break
            if now > deadline or worker.poll() is not None:
                raise RuntimeError(f"the peer stopped at {count} of {JOBS}")
            time.sleep(0.005)
        return (JOBS - first_count) / max(now - first_at, 1e-6)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def celery_purge():
    peer_tasks.celery_app.control.purge()


def celery_enqueue():
    with peer_tasks.celery_app.producer_or_acquire() as producer:
        for n in range(JOBS):
            peer_tasks.celery_noop.apply_async((n,), producer=producer)


def celery_worker(pool, concurrency):
    def start():
        return subprocess.Popen(
            [os.path.join(VENV_BIN, "celery"), "-A", "peer_tasks", "worker", "--pool", pool,
             "--concurrency", str(concurrency), "--loglevel", "WARNING", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    return start


def dramatiq_purge():
    peer_tasks.dramatiq.get_broker().flush_all()


def dramatiq_enqueue():
    for n in range(JOBS):
        peer_tasks.dramatiq_noop.send(n)


def dramatiq_worker():
    return subprocess.Popen(
        [os.path.join(VENV_BIN, "dramatiq"), "peer_tasks", "--processes", "2", "--threads", "8"],
        cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def longshore():
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "integration-tests", "--bench", "throughput", "--",
         "longshore-noop"],
        cwd=ROOT, check=True, capture_output=True, text=True,
        env={**os.environ, "BENCH_JOBS": str(JOBS)},
    ).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)["jobs_per_second"]
    raise RuntimeError(f"no figure from the longshore run: {out}")


RUNS = [
    ("longshore, prefetch 100, concurrency 100", longshore),
    ("Celery 5.7 prefork, 2 processes, acks_late",
     lambda: drain(celery_worker("prefork", 2), celery_enqueue, celery_purge)),
    ("Celery 5.7 threads, 100 threads, acks_late",
     lambda: drain(celery_worker("threads", 100), celery_enqueue, celery_purge)),
    ("Dramatiq 2.2, 2 processes × 8 threads",
     lambda: drain(dramatiq_worker, dramatiq_enqueue, dramatiq_purge)),
]


def main():
    figures = {name: [] for name, _ in RUNS}
    for round_ in range(ROUNDS):
        for name, run in RUNS:
            rate = run()
            figures[name].append(rate)
            print(f"round {round_ + 1}: {name}: {rate:,.0f} jobs/s", flush=True)
    ours = statistics.median(figures[RUNS[0][0]])
    print(f"\nno-op jobs on RabbitMQ, {JOBS} each, median of {ROUNDS} interleaved rounds\n")
    print(f"| run | jobs/s | longshore × | per round |\n| --- | ---: | ---: | --- |")
    for name, _ in RUNS:
        median = statistics.median(figures[name])
        rounds = ", ".join(
            f"{ours_round / rate:.1f}×" for ours_round, rate in zip(figures[RUNS[0][0]], figures[name])
        )
        print(f"| {name} | {median:,.0f} | {ours / median:.1f}× | {rounds} |")


if __name__ == "__main__":
    main()
