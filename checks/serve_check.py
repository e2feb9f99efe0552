"""`make serve-check RUN=runs/<name>`: the device service measured as a client sees it, on 127.0.0.1.

The run's bundle (default candidates) is unpacked into a scratch folder as a device would, `select`
picks its file on this machine, and `python -m edge_runtime serve` runs from it. Then, every phase
bounded in requests and seconds:

1. load at concurrency 1, 4 and 16: JPEG uploads (multipart) of the run's test images, each response
   compared with the offline prediction of the same file by the same model (`Classifier.predict` on the
   same bytes); throughput, p50/p99 end to end (upload to parsed JSON), errors;
2. in-process `Classifier.predict` on the same JPEGs, for the service's overhead at concurrency 1;
3. resident memory of the service after 1,000 and after 10,000 requests;
4. faults against a second, deliberately small instance (1 worker, a short queue and timeout):
   malformed, oversized, truncated, mistyped and empty uploads, a bad parameter, clients that send half
   a body and vanish or stall, and a burst that fills the queue; then good requests must still get the
   offline answers.

Writes runs/<name>/serve_check/serve_check.{json,md,png}; exits 1 when a goal below is missed.
"""
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.files import write_json, write_text
from edge_runtime.timing import summarize
from runlib.progress import logger

CONCURRENCY = (1, 4, 16)
GOALS = {"c1_overhead_ms": 2.0, "c4_over_c1": 1.5, "rss_growth": 0.10}


log = logger("serve-check")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """`python -m edge_runtime serve` in a process of its own, on 127.0.0.1; stopped with SIGTERM."""

    def __init__(self, bundle, *args, startup=120):
        self.port = free_port()
        self.output = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stall the service
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "serve", "--bundle", str(bundle),
                                      "--host", "127.0.0.1", "--port", str(self.port), *args],
                                     stdout=self.output, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited at start: {self.stop()[1][-500:]}")
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the service did not answer /health within {startup} s")

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

    def stop(self, timeout=60):
        """SIGTERM, then the exit code and output (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.seek(0)
        return self.proc.returncode, self.output.read()


def multipart(data, filename="image.jpg", field="image"):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request(port, method, path, body=None, ctype=None, conn=None):
    """(status, parsed JSON or text) over `conn` (kept alive, and its timeout) or a new connection (60 s)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": ctype} if ctype else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    raw = r.read()
    if conn is None:
        c.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw.decode(errors="replace")


def expected_answers(model, images, top_k):
    """The offline prediction of each JPEG, as the service would put it in JSON."""
    from edge_runtime.classifier import Classifier

    clf = Classifier(model, threads=1)
    return [[{"label": l, "probability": p} for l, p in clf.predict(data, top_k=top_k)] for data in images]


@dataclass(frozen=True)
class Uploads:
    """What the load phases send: JPEGs to the service on `port`, and the offline answer expected for each."""
    port: int
    images: list
    expected: list
    top_k: int


def load(uploads, concurrency, count, seconds):
    """`count` uploads (at most `seconds`) from `concurrency` client threads with kept-alive connections."""
    port, images, expected, top_k = uploads.port, uploads.images, uploads.expected, uploads.top_k
    bodies = [multipart(d) for d in images]
    next_i, lock = [0], threading.Lock()
    latencies, errors, mismatches = [], {}, []
    deadline = time.monotonic() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = next_i[0]
                if i >= count:
                    break
                next_i[0] += 1
            k = i % len(images)
            t = time.perf_counter()
            try:
                status, answer = request(port, "POST", f"/v1/classify?top_k={top_k}", *bodies[k], conn=conn)
            except (OSError, http.client.HTTPException) as e:
                status, answer = type(e).__name__, None
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            dt = time.perf_counter() - t
            with lock:
                if status == 200:
                    latencies.append(dt)
                    if answer["top_k"] != expected[k]:
                        mismatches.append(k)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    s = summarize(latencies) if latencies else {}
    return {"concurrency": concurrency, "requests": next_i[0], "ok": len(latencies), "errors": errors,
            "mismatches": len(mismatches), "seconds": wall, "throughput_per_s": len(latencies) / wall,
            "p50_ms": s.get("p50_ms"), "p99_ms": s.get("p99_ms"), "p50_ci_ms": s.get("p50_ci_ms")}


def in_process(model, images, count):
    """p50 of Classifier.predict on the same JPEG bytes in this process (1 thread, as each service worker)."""
    from edge_runtime.classifier import Classifier
    from edge_runtime.timing import latency

    clf = Classifier(model, threads=1)
    return latency(lambda i: clf.predict(images[i % len(images)], top_k=5), min_runs=count, ci=None, max_seconds=60)


# ---------------------------------------------------------------- faults

def raw_exchange(port, head, body_part, then="close", wait=None):
    """Send a request head and part of a body on a raw socket, then close it, or wait for the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(head + body_part)
        if then == "close":
            return None
        s.settimeout(wait)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
    finally:
        s.close()


def at_once(port, body, n):
    """The statuses of n uploads of body started together (a barrier), one thread each."""
    statuses, barrier = [], threading.Barrier(n)

    def upload():
        barrier.wait()
        statuses.append(request(port, "POST", "/v1/classify", body, "image/jpeg")[0])

    threads = [threading.Thread(target=upload) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def faults(port, good, big, timeout):
    """[(fault, expected status, got)] for each bad request the small instance is sent."""
    truncated = good[: len(good) // 2]
    out = []

    def check(name, expected, got):
        out.append({"fault": name, "expected": expected, "got": got, "ok": got == expected})

    body, ctype = multipart(good)
    check("malformed multipart (boundary missing)", 400,
          request(port, "POST", "/v1/classify", body.replace(b"--", b"", 1)[:200], "multipart/form-data")[0])
    check("multipart without a file", 400, request(port, "POST", "/v1/classify", b"", ctype)[0])
    check("oversized upload (declared)", 413, request(port, "POST", "/v1/classify", b"x" * 3_000_001, "image/jpeg")[0])
    head = ("POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunked = b"".join(b"%x\r\n" % 500_000 + b"x" * 500_000 + b"\r\n" for _ in range(7)) + b"0\r\n\r\n"
    check("oversized upload (chunked, no length)", 413, raw_exchange(port, head, chunked, then="answer", wait=30))
    check("truncated JPEG", 422, request(port, "POST", "/v1/classify", truncated, "image/jpeg")[0])
    check("not an image", 422, request(port, "POST", "/v1/classify", b"hello, world" * 100, "image/jpeg")[0])
    check("wrong content type", 415, request(port, "POST", "/v1/classify", good, "text/plain")[0])
    check("empty body", 400, request(port, "POST", "/v1/classify", b"", "image/jpeg")[0])
    check("bad top_k", 400, request(port, "POST", "/v1/classify?top_k=zero", good, "image/jpeg")[0])
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(good)}\r\n\r\n").encode()
    for _ in range(20):
        raw_exchange(port, head, good[: len(good) // 3], then="close")  # half a body, then gone
    check("20 clients gone mid-body, then a good request", 200, request(port, "POST", "/v1/classify", good, "image/jpeg")[0])
    check("a client that stalls mid-body", 408, raw_exchange(port, head, good[:1000], then="answer", wait=timeout + 10))

    statuses = at_once(port, big, 24)
    full = sorted(set(statuses))
    out.append({"fault": "24 large uploads at once into 1 worker and a queue of 2", "expected": "200 and 503",
                "got": {str(s): statuses.count(s) for s in full}, "ok": full == [200, 503]})
    return out


def big_jpeg():
    """A 12-megapixel photo-like JPEG (about 1 MB): tens of milliseconds to decode and resize."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3000, 0:4000]
    img = np.stack([xx / 16 % 256, yy / 12 % 256, (xx + yy) / 28 % 256], -1) + rng.normal(0, 4, (3000, 4000, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def graceful(svc, big, count=3):
    """SIGTERM while `count` slow requests are in flight: each must still be answered, and the service exit 0."""
    statuses = []

    def upload():
        statuses.append(request(svc.port, "POST", "/v1/classify", big, "image/jpeg")[0])

    threads = [threading.Thread(target=upload) for _ in range(count)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    code, output = svc.stop()
    for t in threads:
        t.join()
    return {"in_flight": count, "answered": statuses, "exit_code": code, "said_stopped": "stopped" in output}


# ---------------------------------------------------------------- the whole check

def check(run, requests=(400, 1000, 2000), seconds=30.0, top_k=5):
    """The run's bundle unpacked as a device would, selected on this machine, then served and measured."""
    from edge_runtime.bundle import Bundle, resolve_model
    from edge_runtime.selection import select, table
    from export.bundle import build
    from runlib import scratch

    with tempfile.TemporaryDirectory(prefix=scratch.prefix("serve-check")) as work:
        work = Path(work)
        tarball = build(run, None, work / "dist")
        with tarfile.open(tarball) as tar:
            tar.extractall(work / "device", filter="data")
        bundle = next((work / "device").iterdir())
        log("select on this machine:")
        record = select(bundle, log=log)
        print(table(record), flush=True)
        model = resolve_model(None, bundle, threads=1, log=log)  # what each 1-thread worker serves
        images = [Path(p).read_bytes() for p in run.test_set("test")[0]]
        expected = expected_answers(model, images, top_k)
        result = {"run": run.path.name, "bundle": Bundle(bundle).candidates, "selection": record["choice"],
                  "served": Path(model).name, "images": len(images), "top_k": top_k}
        result.update(_under_load(bundle, model, Uploads(None, images, expected, top_k), requests, seconds))
        result.update(_under_faults(bundle, Uploads(None, images, expected, top_k)))
    return judge(result)


def _under_load(bundle, model, uploads, requests, seconds):
    """Throughput and latency at each concurrency, the in-process figure beside them, memory over 10,000
    requests, and a clean shutdown."""
    svc = ServiceProcess(bundle)
    result = {"load": []}
    try:
        uploads = Uploads(svc.port, uploads.images, uploads.expected, uploads.top_k)
        for c, n in zip(CONCURRENCY, requests):
            log(f"concurrency {c}: {n} uploads (at most {seconds:g} s)")
            r = load(uploads, c, n, seconds)
            log(f"  {r['ok']} ok, errors {r['errors'] or 'none'}, {r['mismatches']} unlike offline, "
                f"{r['throughput_per_s']:.0f}/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
            result["load"].append(r)
        result["in_process"] = in_process(model, uploads.images, requests[0])
        log(f"in-process Classifier.predict on the same JPEGs: p50 {result['in_process']['p50_ms']:.2f} ms")
        log("memory: 10,000 requests at concurrency 4")
        load(uploads, 4, 1000, 120)
        rss_1k = svc.rss_mb()
        tail = load(uploads, 4, 9000, 600)
        result["memory"] = {"rss_mb_after_1000": rss_1k, "rss_mb_after_10000": svc.rss_mb(),
                            "errors": tail["errors"], "mismatches": tail["mismatches"]}
    finally:
        code, output = svc.stop()
    result["shutdown"] = {"exit_code": code, "said_stopped": "stopped" in output}
    return result


def _under_faults(bundle, uploads):
    """Bad and hostile requests against a small instance, then that it still answers right and stops gracefully."""
    log("faults, against an instance with 1 worker, a queue of 2 and a 3 s timeout")
    small = ServiceProcess(bundle, "--workers", "1", "--queue", "2", "--timeout", "3", "--max-bytes", "3000000")
    result = {}
    try:
        big = big_jpeg()
        result["faults"] = faults(small.port, uploads.images[0], big, 3)
        after = load(Uploads(small.port, uploads.images, uploads.expected, uploads.top_k), 2, 200, 60)
        result["after_faults"] = {k: after[k] for k in ("ok", "errors", "mismatches")}
        status, metrics = request(small.port, "GET", "/metrics")
        result["error_metrics"] = [l for l in metrics.splitlines() if l.startswith("edgeclf_request_errors_total")]
        result["graceful"] = graceful(small, big)
    finally:
        small.stop()
    return result


def judge(r):
    """The goals, each with its figure and whether it was met."""
    by_c = {x["concurrency"]: x for x in r["load"]}
    c1, c4 = by_c[1], by_c[4]
    mem = r["memory"]
    goals = [
        ("every response equal to the offline prediction", sum(x["mismatches"] for x in r["load"]) == 0
         and all(not x["errors"] for x in r["load"]), "0 mismatches, 0 errors at every concurrency"),
        (f"p50 at concurrency 1 within {GOALS['c1_overhead_ms']:g} ms of in-process predict",
         c1["p50_ms"] - r["in_process"]["p50_ms"] <= GOALS["c1_overhead_ms"],
         f"{c1['p50_ms']:.2f} against {r['in_process']['p50_ms']:.2f} ms (+{c1['p50_ms'] - r['in_process']['p50_ms']:.2f})"),
        (f"throughput at concurrency 4 at least {GOALS['c4_over_c1']:g}x concurrency 1",
         c4["throughput_per_s"] >= GOALS["c4_over_c1"] * c1["throughput_per_s"],
         f"{c4['throughput_per_s']:.0f} against {c1['throughput_per_s']:.0f}/s "
         f"({c4['throughput_per_s'] / c1['throughput_per_s']:.2f}x)"),
        (f"resident memory after 10,000 requests within {GOALS['rss_growth']:.0%} of after 1,000",
         mem["rss_mb_after_10000"] <= (1 + GOALS["rss_growth"]) * mem["rss_mb_after_1000"] and not mem["errors"],
         f"{mem['rss_mb_after_1000']:.1f} -> {mem['rss_mb_after_10000']:.1f} MB"),
        ("every fault answered with its status", all(f["ok"] for f in r["faults"]),
         f"{sum(f['ok'] for f in r['faults'])} of {len(r['faults'])}"),
        ("correct answers after the faults", r["after_faults"]["ok"] > 0 and not r["after_faults"]["errors"]
         and not r["after_faults"]["mismatches"], f"{r['after_faults']['ok']} ok"),
        ("SIGTERM: stops cleanly", r["shutdown"]["exit_code"] == 0 and r["shutdown"]["said_stopped"],
         f"exit code {r['shutdown']['exit_code']}"),
        ("SIGTERM with requests in flight: each answered, then exit 0",
         r["graceful"]["answered"] == [200] * r["graceful"]["in_flight"] and r["graceful"]["exit_code"] == 0,
         f"{r['graceful']['answered']}, exit code {r['graceful']['exit_code']}"),
    ]
    r["goals"] = [{"goal": g, "met": bool(m), "figure": f} for g, m, f in goals]
    r["passed"] = all(g["met"] for g in r["goals"])
    return r


def markdown(r, machine):
    lines = [f"# Serve check: {r['run']}", "",
             f"Bundle candidates {', '.join(r['bundle'])}; `select` on this machine chose {r['selection']['1']} at 1 "
             f"thread (served: `{r['served']}`, 1 thread per worker). {r['images']} test JPEGs uploaded as multipart, "
             f"top-{r['top_k']}; 127.0.0.1. Machine: {machine['cpu']}, {machine['cores']} cores, CPU flags "
             f"{' '.join(machine['cpu_flags'])}.", "",
             "| concurrency | requests | ok | errors | unlike offline | throughput /s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {x['concurrency']} | {x['requests']} | {x['ok']} | {x['errors'] or 0} | {x['mismatches']} | "
              f"{x['throughput_per_s']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} |" for x in r["load"]]
    lines += ["", f"In-process `Classifier.predict` on the same JPEGs: p50 {r['in_process']['p50_ms']:.2f} ms.", "",
              "| goal | figure | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['figure']} | {'yes' if g['met'] else '**no**'} |" for g in r["goals"]]
    lines += ["", "| fault | expected | got |", "|---|---|---|"]
    lines += [f"| {f['fault']} | {f['expected']} | {f['got']} |" for f in r["faults"]]
    lines += ["", "Error counters afterwards (`/metrics`): " + "; ".join(f"`{m}`" for m in r["error_metrics"]), "",
              "![throughput and latency by concurrency](serve_check.png)", ""]
    return "\n".join(lines)


def plot(r, path):
    from runlib.plots import plt, save

    xs = [x["concurrency"] for x in r["load"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.plot(xs, [x["throughput_per_s"] for x in r["load"]], "o-")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="responses per second", title="throughput", ylim=(0, None))
    b.plot(xs, [x["p50_ms"] for x in r["load"]], "o-", label="p50")
    b.plot(xs, [x["p99_ms"] for x in r["load"]], "s--", label="p99")
    b.axhline(r["in_process"]["p50_ms"], color="grey", lw=0.8, label="in-process predict, p50")
    b.set(xscale="log", xlabel="concurrent clients", ylabel="ms, upload to JSON", title="latency")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
    save(fig, path)


def run_command(o):
    """`edgeclf serve-check`: options by name (runlib/options.py)."""
    from edge_runtime.machine import describe as machine
    from runlib.options import resolve
    from runlib.run_folder import resolve_run

    c = resolve("serve-check", o)
    try:
        counts = tuple(int(x) for x in str(c.requests).split(","))
    except ValueError:
        counts = ()
    if len(counts) != len(CONCURRENCY) or min(counts) < 1:
        raise InputError(f"--requests must be {len(CONCURRENCY)} whole numbers of at least 1, got {c.requests!r}")
    run = resolve_run(c.run)
    r = check(run, counts, c.seconds)
    out = run.path / "serve_check"
    m = machine()
    r["machine"] = m
    write_json(out / "serve_check.json", r)
    write_text(out / "serve_check.md", markdown(r, m))
    plot(r, out / "serve_check.png")
    print(markdown(r, m), flush=True)
    if not r["passed"]:
        print("error: serve check missed: " + "; ".join(g["goal"] for g in r["goals"] if not g["met"]), file=sys.stderr)
        return 1
    log(f"passed; {out / 'serve_check.md'}")
    return 0

