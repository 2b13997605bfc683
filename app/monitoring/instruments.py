"""The service's Prometheus instruments, one module-level object each (as prometheus_client expects).

Every process imports the same definitions and updates the ones it owns: the API its HTTP and /predict
instruments, the reaper its actions, a training worker its throughput, epoch times and GPU memory. Label sets are
bounded: route templates (never raw paths), HTTP methods and statuses, a reaper's kinds and actions, a worker's
name (its launcher's `--name` at its host, stable across restarts) and its device.

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before this module is imported; see app/monitoring/multiproc.py)
each process writes its values to files that the API's /metrics adds up. The gauges a process sets for itself are
`livemostrecent`: a process marked dead (app.monitoring.multiproc.mark_dead) leaves no stale series behind.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# ---- HTTP (app/api/request_metrics.py)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "visiontune_http_requests",
    "HTTP requests answered, by method, route template and status (event streams counted when they end)",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "visiontune_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method, route template and status "
    "(event streams are left out: their length is the client's)",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)

# ---- /predict's batcher (app/serving/batcher.py)
PREDICT_BATCH_SIZE = Histogram(
    "visiontune_predict_batch_size_images",
    "Images per /predict forward (concurrent requests coalesced by the batcher)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PREDICT_QUEUE_WAIT = Histogram(
    "visiontune_predict_queue_wait_seconds",
    "Time images of a /predict request waited in the batcher's queue before their forward started",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
PREDICT_FORWARD = Histogram(
    "visiontune_predict_forward_seconds",
    "Time of one /predict forward (a whole batch)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# ---- the reaper (worker/reaper.py)
REAPER_ACTIONS = Counter(
    "visiontune_reaper_actions",
    "What the reaper did, by kind (job, export) and action: requeued (a dead worker's lease expired, retried "
    "later), failed (its attempts spent), canceled (a cancel was pending), resent (a task the broker lost)",
    ["kind", "action"],
)
REAPER_SWEEPS = Counter("visiontune_reaper_sweeps", "Reaper sweeps, by result (ok, error)", ["result"])

# ---- training workers (worker/telemetry.py)
WORKER_LABELS = ["worker", "device"]
TRAINING_IMAGES_PER_SECOND = Gauge(
    "visiontune_training_images_per_second",
    "Training throughput of the epoch in progress (0 while the worker is idle)",
    WORKER_LABELS,
    multiprocess_mode="livemostrecent",
)
TRAINING_IMAGES = Counter("visiontune_training_images", "Images trained on (finished epochs)", WORKER_LABELS)
EPOCH_DURATION = Histogram(
    "visiontune_training_epoch_duration_seconds",
    "Wall time of a training epoch (training and validation)",
    WORKER_LABELS,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
TRAINING_RUNS = Counter(
    "visiontune_training_runs",
    "Training attempts a worker ended, by outcome (succeeded, failed, canceled, requeued, retrying, lease-lost, "
    "skipped, error: the run raised before recording an outcome)",
    ["worker", "outcome"],
)
GPU_MEMORY_ALLOCATED = Gauge(
    "visiontune_gpu_memory_allocated_bytes",
    "CUDA memory held by tensors in a training worker (torch.cuda.memory_allocated)",
    WORKER_LABELS,
    multiprocess_mode="livemostrecent",
)
GPU_MEMORY_RESERVED = Gauge(
    "visiontune_gpu_memory_reserved_bytes",
    "CUDA memory reserved by a training worker's caching allocator (torch.cuda.memory_reserved)",
    WORKER_LABELS,
    multiprocess_mode="livemostrecent",
)
GPU_UTILIZATION = Gauge(
    "visiontune_gpu_utilization_ratio",
    "Share of the last sample period the training worker's GPU was busy, 0-1 (NVML; absent without pynvml)",
    WORKER_LABELS,
    multiprocess_mode="livemostrecent",
)
