"""The Celery side of the job benchmark's comparison: an app and the one task it runs.

The task runs one job's rows through the steps of the worker's ``/batch_predict``
without the HTTP: the same model class (``MODEL``, as the worker reads it), loaded
and compiled by the worker's own runtime once per Celery process, the same parser,
the same ``postprocess``. In-process is Celery's best case and how a Celery
deployment would hold a model; calling our worker over HTTP would add a hop
Celery users do not have. The app is configured for the guarantees our job path
gives: a task is acked only after it ran (``acks_late``: a worker killed mid-task
does not lose it), a publish returns once the broker confirmed it, the queue is
durable and its messages persistent.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from celery import Celery
from celery.signals import worker_process_init

TASK_NAME = "bench.predict_rows"


class _ServedModel:
    """The worker's model, runtime and parser in this process (JAX is imported only here, in the worker)."""

    def __init__(self) -> None:
        from worker.batcher import Batcher
        from worker.contract import load_model_class
        from worker.metrics import WorkerMetrics
        from worker.predictor import Predictor
        from worker.runtime import ModelRuntime, configure_jax
        from worker.settings import WorkerSettings

        settings = WorkerSettings()
        configure_jax(settings.jax_cache_dir)
        metrics = WorkerMetrics(settings.max_batch_size)
        model = load_model_class(settings.model)()
        self.runtime = ModelRuntime(model, settings.model_artifacts, settings.bucket_sizes, metrics)
        outputs = self.runtime.load_and_warm_up()
        # The predictor parses here; its batcher is never started: the task calls the runtime itself.
        batcher = Batcher(self.runtime.infer, max_batch_size=settings.max_batch_size, timeout_s=0.0,
                          max_queue_rows=settings.max_queue_rows, metrics=metrics)
        self.predictor = Predictor(model, outputs, batcher, worker_id=f"celery-{os.getpid()}",
                                   max_rows_per_request=settings.max_rows_per_request)
        self.model = model

    def predict(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = self.predictor.parse_many(orjson.dumps(inputs))
        outputs = self.runtime.infer(rows.values)
        answers = []
        for i, flag in enumerate(rows.return_probabilities):
            answer = self.model.postprocess({name: value[i] for name, value in outputs.items()},
                                            {"return_probabilities": flag})
            answer["worker_id"] = self.predictor.worker_id
            answers.append(answer)
        # Celery's JSON encoder knows no numpy types; the worker's responses go through orjson the same way.
        return orjson.loads(orjson.dumps(answers, option=orjson.OPT_SERIALIZE_NUMPY))


_served: _ServedModel | None = None


def _model() -> _ServedModel:
    global _served
    if _served is None:
        _served = _ServedModel()
    return _served


@worker_process_init.connect
def _load_before_the_first_task(**_: Any) -> None:
    """Each pool process loads and compiles the model when it starts, as our workers do before they serve."""
    _model()


def predict_rows(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One job: its rows' answers, as ``/batch_predict`` gives them."""
    return _model().predict(inputs)


def make_app(broker_url: str, queue: str, results: str, schema: str | None = None) -> Celery:
    """An app on ``broker_url`` with its own ``queue`` (and exchange of that name), results in the Celery result
    backend ``results`` (``db+postgresql+psycopg2://...``: in the PostgreSQL ``schema``; ``redis://...``)."""
    app = Celery("bench", broker=broker_url, backend=results, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        # No remote control or events: nothing is declared on the broker but the queue and its exchange.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    if schema is not None:
        app.conf.database_engine_options = {"connect_args": {"options": f"-csearch_path={schema}"}}
    app.task(name=TASK_NAME)(predict_rows)
    return app
