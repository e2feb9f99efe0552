"""`serve`: the classifier as an HTTP service, Starlette on Uvicorn, bounded in every direction.

    POST /v1/classify[?top_k=N]   an image as the raw body (Content-Type image/* or
                                  application/octet-stream) or a multipart/form-data upload (field
                                  "image" or "file"); answers {"label" (a class or "unknown"),
                                  "confidence", "unknown", "review", "top_k": [{"label", "probability"}], ...}
    GET  /v1/model                labels, variant, file, sha256, preprocessing contract, runtime
    GET  /health                  {"status": "ok", ...} once the model is loaded
    GET  /metrics                 Prometheus text: requests, errors by kind, latency histograms,
                                  queue depth, model and runtime versions, process memory

Bounds: a request body larger than --max-bytes is refused (413) before or while it is read; the whole
request (body, queue, inference) has --timeout seconds (408 while the body is still arriving, 504
after); decoding and inference run on --workers threads, each with its own interpreter (a TFLite
interpreter is not thread-safe), fed from one queue of --queue jobs, and a request that finds it full
is answered 503 at once instead of the queue growing. SIGTERM stops accepting, finishes the requests in
flight, then exits. Every error is a JSON body {"error": {"kind", "message"}} with its status, and the
service keeps serving.
"""
import asyncio
import contextlib
import queue
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .classifier import Classifier
from .errors import InputError
from .files import sha256_file
from .machine import cores, runtime_versions

RAW_TYPES = ("image/", "application/octet-stream")
FORM_FIELDS = ("image", "file")
# seconds; a Pi runs a small model in milliseconds and ResNet-50 in a fraction of a second
LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)


@dataclass
class Limits:
    max_bytes: int = 10_000_000  # a 20-megapixel JPEG is about 8 MB
    timeout: float = 30.0  # seconds for the whole request
    queue: int = 32  # jobs waiting for a worker; beyond it, 503
    workers: int = field(default_factory=cores)
    threads: int = 1  # per worker: workers x threads should not exceed the cores
    top_k: int = 5
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers (http_guard.py)
    hosts: tuple = ()  # Host header names answered (http_guard.allowed_hosts); empty: the loopback names only
    token: str | None = None  # when set, every POST must carry it
    max_connections: int = 256  # open connections served fully; beyond, /health and /metrics only (http_guard.py)

    @property
    def body_budget(self):
        """Bytes of request bodies held at once across requests: four bodies of the largest size. Beyond, 503."""
        return 4 * self.max_bytes

    @property
    def in_flight(self):
        """Classify requests handled at once (reading a body, waiting or running); beyond, 503 at once. Twice
        what the workers and the queue hold: as many again may be reading their bodies meanwhile."""
        return 2 * (self.queue + self.workers)


class HTTPError(Exception):
    def __init__(self, status, kind, message, headers=None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


class Job:
    __slots__ = ("data", "top_k", "loop", "future", "abandoned", "started")

    def __init__(self, data, top_k, loop):
        self.data, self.top_k, self.loop = data, top_k, loop
        self.future, self.abandoned, self.started = loop.create_future(), False, None


def _settle(future, outcome):
    if not future.done():  # the request may have timed out meanwhile
        result, error = outcome
        future.set_exception(error) if error else future.set_result(result)


class Pool:
    """`workers` threads, each with its own Classifier, taking jobs from one bounded queue."""

    def __init__(self, model, limits, metrics=None):
        self.limits, self.metrics = limits, metrics
        self.classifiers = [Classifier(model, threads=limits.threads) for _ in range(limits.workers)]
        for clf in self.classifiers:  # the first inference of an interpreter is slow: not on a request
            clf.probabilities(np.zeros((1, *clf.size, 3), np.uint8))
        self.jobs: queue.Queue = queue.Queue(limits.queue)
        self.threads = [threading.Thread(target=self._work, args=(c,), name=f"inference-{i}", daemon=True)
                        for i, c in enumerate(self.classifiers)]
        for t in self.threads:
            t.start()

    def submit(self, job):
        """Queue a job; HTTPError 503 when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise HTTPError(503, "queue_full", f"all {self.limits.workers} workers are busy and "
                                               f"{self.limits.queue} requests are waiting; retry shortly",
                            {"Retry-After": "1"}) from None

    def _work(self, clf):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.abandoned:  # its request timed out or went away while it waited
                continue
            job.started = time.perf_counter()
            outcome: tuple
            try:
                outcome = (clf.predict(job.data, top_k=job.top_k), None)
            except InputError as e:
                outcome = (None, HTTPError(422, "bad_image", str(e).replace("<bytes>: ", "")))
            except Exception as e:  # noqa: BLE001  the service must outlive any one request
                outcome = (None, HTTPError(500, "internal", f"{type(e).__name__}: {e}"))
            if self.metrics:
                self.metrics.inference.observe(time.perf_counter() - job.started)
            job.loop.call_soon_threadsafe(_settle, job.future, outcome)

    def close(self):
        """Let the queued jobs finish, then stop the workers."""
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()


class Metrics:
    def __init__(self, info):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
        from prometheus_client import ProcessCollector, disable_created_metrics

        disable_created_metrics()  # the *_created series only restate the start time
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # resident memory, CPU seconds, open files
        self.requests = Counter("edgeclf_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.errors = Counter("edgeclf_request_errors", "requests that failed, by kind", ["kind"], registry=r)
        self.latency = Histogram("edgeclf_classify_seconds", "POST /v1/classify, first byte in to response out",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("edgeclf_inference_seconds", "decode, resize and inference on a worker",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.answers = Counter("edgeclf_classifications", "images classified (a rising share of unknown answers is "
                               "a sign the photos changed)", registry=r)
        self.unknown = Counter("edgeclf_unknown_answers", "images answered \"unknown\" by the decision rule", registry=r)
        self.inflight = Gauge("edgeclf_requests_in_flight", "classify requests being handled", registry=r)
        self.queue_depth = Gauge("edgeclf_queue_depth", "jobs waiting for a worker", registry=r)
        self.connections = Counter("edgeclf_connection_events",
                                   "connections the server closed, refused or limited, by reason", ["reason"], registry=r)
        Info("edgeclf_model", "the model served and the runtime serving it", registry=r).info(
            {k: str(v) for k, v in info.items()})

    def text(self):
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def model_info(model, clf, why):
    """What GET /v1/model answers, and the labels of the Prometheus info metric."""
    path = Path(model)
    return {"variant": clf.variant, "file": path.name, "sha256": sha256_file(path), "format": clf.backend.format,
            "why": why, "labels": clf.labels, "image_size": list(clf.size), "input": clf.input.as_dict(),
            "output": clf.output.as_dict(), "runtime_settings": clf.settings,
            "preprocessing": ((clf.manifest or {}).get("preprocessing")), "decision": clf.rule.as_dict(),
            "versions": runtime_versions()}


class BodyBytes:
    """The bytes of request bodies the service holds at once, against Limits.body_budget: a body that would take the
    total over it is refused with 503 as it arrives, so many large uploads at once cannot exhaust memory. Counted on
    the event loop only: no lock."""

    def __init__(self, budget):
        self.budget, self.held = budget, 0

    def share(self):
        """A request's share: share.take(n) reserves n more bytes (HTTPError 503 over the budget), share.release()
        gives all of them back."""
        bodies = self

        class Share:
            n = 0

            def take(self, n):
                if bodies.held + n > bodies.budget:
                    raise HTTPError(503, "busy", f"{bodies.held} bytes of uploads are being handled, the limit; retry "
                                                 "shortly", {"Retry-After": "1"})
                bodies.held += n
                self.n += n

            def release(self):
                bodies.held -= self.n
                self.n = 0

        return Share()


async def read_body(request, limits, deadline, share=None):
    """The request body, refused when larger than limits.max_bytes (413), over the bodies' budget (503; `share`,
    this request's BodyBytes.share()) or slower than the deadline (408)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_bytes):
        raise HTTPError(413, "too_large", f"the body is {declared} bytes; the limit is {limits.max_bytes}")
    chunks, size = [], 0

    async def receive():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise HTTPError(413, "too_large", f"the body exceeds the limit of {limits.max_bytes} bytes")
            if share is not None:
                share.take(len(chunk))
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        raise HTTPError(408, "body_timeout", f"the body did not arrive within {limits.timeout:g} s") from None
    except ClientDisconnect:
        raise HTTPError(499, "client_disconnected", "the client went away before sending the whole body") from None
    return b"".join(chunks)


async def image_bytes(request, body, limits):
    """The image in a raw or multipart body."""
    from starlette.requests import Request

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith(RAW_TYPES):
        data = body
    elif ctype == "multipart/form-data":
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=16, max_part_size=limits.max_bytes)
        except Exception as e:  # noqa: BLE001  starlette raises its own types for malformed forms
            raise HTTPError(400, "bad_form", f"malformed multipart body ({e})") from None
        from starlette.datastructures import UploadFile

        files = [v for v in (form.get(f) for f in FORM_FIELDS) if isinstance(v, UploadFile)]
        upload = next(iter(files), None) or next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise HTTPError(400, "bad_form", f"the multipart body holds no file (send it as field "
                                             f"{' or '.join(map(repr, FORM_FIELDS))})")
        data = await upload.read()
        await form.close()
    else:
        raise HTTPError(415, "unsupported_type", f"Content-Type {ctype or 'missing'}: send the image as image/* or "
                                                 "application/octet-stream, or as multipart/form-data")
    if not data:
        raise HTTPError(400, "empty", "the request holds no image bytes")
    return data


def top_k_of(request, limits, classes):
    """?top_k=N: ASCII digits only (str.isdigit() takes '²', which int() refuses) and at most 6 of them."""
    raw = request.query_params.get("top_k", str(limits.top_k))
    if not re.fullmatch(r"[0-9]{1,6}", raw) or int(raw) < 1:
        raise HTTPError(400, "bad_request", f"top_k must be a whole number of at least 1, got {raw[:20]!r}")
    return min(int(raw), classes)


class Service:
    """The routes, over one model, its inference pool (started and stopped with the app's lifespan) and metrics."""

    def __init__(self, model, limits, why):
        self.model, self.limits = model, limits
        probe = Classifier(model, threads=1)  # checks the file (checksum, labels) before anything listens
        self.info = model_info(model, probe, why)
        self.metrics = Metrics({"variant": self.info["variant"], "file": self.info["file"], "sha256": self.info["sha256"],
                                "format": self.info["format"],
                                **{f"version_{k}": v for k, v in self.info["versions"].items()}})
        self.pool: Pool | None = None  # set while the app runs (lifespan)
        self.busy = 0  # classify requests in flight (the event loop's own count: no lock needed)
        self.bodies = BodyBytes(limits.body_budget)

    async def not_handled(self, request, exc):
        """The framework's own errors (no such route, a method the route does not take) as JSON, counted."""
        status = getattr(exc, "status_code", 500)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request" if status < 500 else "internal")
        message = {404: f"no such path {request.url.path!r}", 405: f"{request.method} is not allowed here"}.get(
            status, getattr(exc, "detail", None) or type(exc).__name__)
        known = request.url.path in ("/v1/classify", "/v1/model", "/health", "/metrics")
        self.metrics.requests.labels(request.url.path if known else "other", str(status)).inc()
        return self.error(HTTPError(status, kind, message, dict(getattr(exc, "headers", None) or {})))

    def error(self, e):
        from starlette.responses import JSONResponse

        self.metrics.errors.labels(e.kind).inc()
        return JSONResponse({"error": {"kind": e.kind, "message": str(e)}}, status_code=e.status, headers=e.headers)

    async def classify(self, request):
        from starlette.responses import JSONResponse

        start = time.perf_counter()
        if self.busy >= self.limits.in_flight:  # refused before reading the body: a flood costs no memory
            response = self.error(HTTPError(503, "busy", f"{self.busy} requests in flight, the limit; retry shortly",
                                            {"Retry-After": "1"}))
            self.metrics.requests.labels("/v1/classify", "503").inc()
            return response
        self.busy += 1
        self.metrics.inflight.inc()
        share = self.bodies.share()  # the body's bytes count until the answer: waiting in the queue holds them too
        try:
            result, job = await self._answer(request, start, share)
            done = time.perf_counter()
            if result.unknown:
                self.metrics.unknown.inc()
            response = JSONResponse({**result.as_dict(),
                                     "variant": self.info["variant"], "sha256": self.info["sha256"],
                                     "ms": {"total": round(1000 * (done - start), 3),
                                            "waited": round(1000 * (job.started - start), 3)}})
            self.metrics.latency.observe(time.perf_counter() - start)
            self.metrics.answers.inc()
        except HTTPError as e:
            response = self.error(e)
        except Exception as e:  # noqa: BLE001  the service must outlive any one request
            response = self.error(HTTPError(500, "internal", f"{type(e).__name__}: {e}"))
        finally:
            self.busy -= 1
            share.release()
            self.metrics.inflight.dec()
        self.metrics.requests.labels("/v1/classify", str(response.status_code)).inc()
        return response

    async def _answer(self, request, start, share):
        """(top-k, job) for one request, within the deadline; HTTPError for anything else. share: this request's
        share of the bodies' budget, released by the caller once it has answered."""
        limits, deadline = self.limits, start + self.limits.timeout
        top_k = top_k_of(request, limits, len(self.info["labels"]))
        data = await image_bytes(request, await read_body(request, limits, deadline, share), limits)
        job = Job(data, top_k, asyncio.get_running_loop())
        if self.pool is None:  # not started yet, or shutting down
            raise HTTPError(503, "unavailable", "the service is starting or stopping; try again")
        self.pool.submit(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(0.0, deadline - time.perf_counter())), job
        except asyncio.TimeoutError:
            job.abandoned = True
            raise HTTPError(504, "timeout", f"no answer within {limits.timeout:g} s") from None

    async def model_route(self, request):
        from starlette.responses import JSONResponse

        self.metrics.requests.labels("/v1/model", "200").inc()
        return JSONResponse(dict(self.info, limits=asdict(self.limits)))

    async def health(self, request):
        from starlette.responses import JSONResponse

        pool = self.pool
        self.metrics.requests.labels("/health", "200" if pool else "503").inc()
        body = {"status": "ok" if pool else "starting", "variant": self.info["variant"], "workers": self.limits.workers,
                "queue": pool.jobs.qsize() if pool else 0, "queue_limit": self.limits.queue}
        return JSONResponse(body, status_code=200 if pool else 503)

    async def metrics_route(self, request):
        from starlette.responses import Response

        self.metrics.requests.labels("/metrics", "200").inc()
        self.metrics.queue_depth.set(self.pool.jobs.qsize() if self.pool else 0)
        return Response(self.metrics.text(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.pool = await asyncio.to_thread(Pool, self.model, self.limits, self.metrics)
        try:
            yield
        finally:
            pool, self.pool = self.pool, None
            if pool is not None:
                await asyncio.to_thread(pool.close)


def create_app(model, limits=None, why="given"):
    """The ASGI application serving `model`."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from starlette.exceptions import HTTPException

    svc = Service(model, limits or Limits(), why)
    app = Starlette(routes=[Route("/v1/classify", svc.classify, methods=["POST"]), Route("/v1/model", svc.model_route),
                            Route("/health", svc.health), Route("/metrics", svc.metrics_route)], lifespan=svc.lifespan,
                    exception_handlers={HTTPException: svc.not_handled, Exception: svc.not_handled})
    app.state.service = svc
    from .http_guard import LOCAL_NAMES, RequestGuard

    limits = svc.limits
    guard = RequestGuard(app, frozenset(limits.hosts or LOCAL_NAMES), limits.token,
                         lambda kind: svc.metrics.errors.labels(kind).inc())
    return guard


def serve(model, limits, address=("127.0.0.1", 8080), why="given", access_log=False, log=print):
    """Run on address (host, port) until SIGTERM or SIGINT; requests in flight are finished first."""
    import uvicorn

    host, port = address
    app = create_app(model, limits, why)
    log(f"serving {Path(model).name} on http://{host}:{port} ({limits.workers} worker(s) x {limits.threads} thread(s), "
        f"queue {limits.queue}, body limit {limits.max_bytes} bytes, timeout {limits.timeout:g} s)")
    from .http_guard import protocol_for

    counter = app.state.service.metrics.connections
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level="warning",
                            timeout_graceful_shutdown=int(limits.timeout) + 5, lifespan="on",
                            # idle and slow-header connections closed, open connections capped, errors as JSON
                            http=protocol_for(limits, lambda reason: counter.labels(reason).inc()),
                            timeout_keep_alive=max(1, min(5, int(limits.header_timeout))))
    # Uvicorn finishes the requests in flight on SIGTERM/SIGINT, then raises the signal again for whatever
    # handler was there before it: this one, so the process ends normally and says so
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
    log("stopped: requests in flight finished")
