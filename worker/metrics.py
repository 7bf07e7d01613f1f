"""Prometheus metrics of the worker (served by the API at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_FINISHED = Counter(
    "imagegen_jobs_finished_total",
    "Job attempts that ended, by type and outcome (completed, retry, failed, lost, snoozed).",
    ["job_type", "outcome"],
)
JOB_DURATION = Histogram(
    "imagegen_job_duration_seconds",
    "Wall time of one job attempt.",
    ["job_type"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
CLAIM_LATENCY = Histogram(
    "imagegen_claim_latency_seconds",
    "Time of one claim_jobs call.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
JOBS_IN_FLIGHT = Gauge("imagegen_jobs_in_flight", "Jobs this process is running now.")
