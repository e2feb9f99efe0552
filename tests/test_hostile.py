"""The service under attack: idle and slow connections, odd query values, paths and methods it does not serve,
malformed HTTP. Each is answered (JSON, never a 500), and the service goes on answering correctly.

The service runs a small float model made here (no ../shared needed), on 127.0.0.1, with a 2 s header deadline
so the test waits seconds, not minutes; every loop is bounded in count and time."""
import http.client
import json
import socket
import time

import pytest

from conftest import make_image


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A 3-class float TFLite classifier at 32 px, with its labels beside it."""
    from runlib.tf_setup import import_keras, import_tensorflow

    tf, keras = import_tensorflow(), import_keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    folder = tmp_path_factory.mktemp("small-model")
    (folder / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    return folder / "model.tflite"


@pytest.fixture(scope="module")
def service(small_model):
    from checks.serve_check import ServiceProcess

    svc = ServiceProcess(small_model.parent, "--model", str(small_model), "--workers", "1", "--header-timeout", "2",
                         "--max-connections", "64")
    yield svc
    svc.stop()


def ask(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def jpeg():
    import io

    buf = io.BytesIO()
    make_image((200, 40, 40), 48).save(buf, "JPEG")
    return buf.getvalue()


def answers_correctly(port, small_model):
    from edge_runtime import Classifier

    status, _, body = ask(port, "POST", "/v1/classify?top_k=1", jpeg(), {"Content-Type": "image/jpeg"})
    expected = Classifier(small_model, threads=1).predict(jpeg(), top_k=1)[0][0]
    return status == 200 and json.loads(body)["top_k"][0]["label"] == expected


def test_every_error_is_json_and_none_is_a_500(service, small_model):
    port, image = service.port, jpeg()
    cases = [("GET", "/no/such/path", None, {}, 404), ("GET", "/v1/classify", None, {}, 405),
             ("DELETE", "/health", None, {}, 405),
             ("POST", "/v1/classify?top_k=%C2%B2", image, {"Content-Type": "image/jpeg"}, 400),  # '²' isdigit()
             ("POST", "/v1/classify?top_k=" + "9" * 5000, image, {"Content-Type": "image/jpeg"}, 400),
             ("POST", "/v1/classify?top_k=-1", image, {"Content-Type": "image/jpeg"}, 400),
             ("POST", "/v1/classify?top_k=0x10", image, {"Content-Type": "image/jpeg"}, 400)]
    for method, path, body, headers, expected in cases:
        status, head, raw = ask(port, method, path, body, headers)
        assert status == expected, (path[:40], status, raw[:200])
        assert head.get("content-type") == "application/json" and json.loads(raw)["error"]["kind"], (path[:40], raw)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # not HTTP at all: the server's own 400
        s.sendall(b"\x00\x01 garbage\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400") and json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["kind"] == "bad_http"
    metrics = ask(port, "GET", "/metrics")[2].decode()
    assert 'edgeclf_requests_total{path="other",status="404"}' in metrics
    assert 'edgeclf_requests_total{path="/v1/classify",status="405"}' in metrics
    assert answers_correctly(port, small_model)


def test_health_answers_while_500_idle_connections_are_open_and_they_are_closed(service, small_model):
    port = service.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(500)]
    try:
        status, _, body = ask(port, "GET", "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert ask(port, "GET", "/metrics")[0] == 200  # the reserved paths answer over the connection cap...
        status, head, body = ask(port, "GET", "/v1/model")  # ...and others are told to come back, in JSON
        assert status == 503 and head.get("retry-after") == "1"
        assert json.loads(body)["error"]["kind"] == "too_many_connections"
        deadline, still_open = time.monotonic() + 10, len(idle)
        while still_open and time.monotonic() < deadline:  # closed by the server once the 2 s header deadline passes
            time.sleep(0.5)
            still_open = sum(_open(s) for s in idle)
        assert still_open == 0, still_open
    finally:
        for s in idle:
            s.close()
    metrics = ask(port, "GET", "/metrics")[2].decode()
    closed = [l for l in metrics.splitlines() if l.startswith('edgeclf_connection_events_total{reason="header_timeout"}')]
    assert closed and float(closed[0].split()[-1]) >= 500, closed
    assert answers_correctly(port, small_model)


def test_a_slowloris_client_is_cut_off_at_the_header_deadline(service, small_model):
    with socket.create_connection(("127.0.0.1", service.port), timeout=0.5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        start, cut = time.monotonic(), None
        for i in range(40):  # a header line every 0.25 s, for at most 10 s
            try:
                s.sendall(f"X-Drip-{i}: 1\r\n".encode())
                if s.recv(1024) == b"":
                    cut = time.monotonic() - start
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                cut = time.monotonic() - start
                break
    assert cut is not None and cut < 6, cut  # the deadline is 2 s; a drip does not reset it
    assert answers_correctly(service.port, small_model)


def _open(s):
    s.settimeout(0.01)
    try:
        return s.recv(1) != b""
    except socket.timeout:
        return True
    except OSError:
        return False


def test_serve_refuses_a_port_out_of_range_in_one_line(small_model):
    from conftest import assert_one_line_error, run_cli

    proc = run_cli("-m", "edge_runtime", "serve", "--model", str(small_model), "--port", "99999")
    assert_one_line_error(proc, "--port")



def _raw(port, method, path, body=b"", headers=(), host=None):
    """(status, JSON body) of a request with exactly these headers (Host as given, else 127.0.0.1:port)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, path, skip_host=True)
        c.putheader("Host", host or f"127.0.0.1:{port}")
        for k, v in headers:
            c.putheader(k, v)
        c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        c.close()


def test_cross_site_requests_and_foreign_host_names_are_refused(service, small_model):
    port, image, ctype = service.port, jpeg(), ("Content-Type", "image/jpeg")
    refused = [  # (what, method, headers, host, status, kind)
        ("DNS rebinding: a name the attacker controls", "GET", [], "evil.example:80", 400, "host_not_allowed"),
        ("a rebound name posting", "POST", [ctype], f"attacker.test:{port}", 400, "host_not_allowed"),
        ("a form posted from another site", "POST", [ctype, ("Sec-Fetch-Site", "cross-site")], None, 403, "cross_site"),
        ("a form posted from a sibling site", "POST", [ctype, ("Sec-Fetch-Site", "same-site")], None, 403, "cross_site"),
        ("an older browser's Origin", "POST", [ctype, ("Origin", "http://evil.example")], None, 403, "cross_site")]
    for what, method, headers, host, status, kind in refused:
        got = _raw(port, method, "/v1/classify" if method == "POST" else "/v1/model", image, headers, host)
        assert got[0] == status and got[1]["error"]["kind"] == kind, (what, got)
    allowed = [[ctype], [ctype, ("Origin", f"http://127.0.0.1:{port}"), ("Sec-Fetch-Site", "same-origin")],
               [ctype, ("Sec-Fetch-Site", "none")]]  # curl and scripts; the service's own pages; a typed URL
    for headers in allowed:
        assert _raw(port, "POST", "/v1/classify", image, headers)[0] == 200, headers
    assert _raw(port, "GET", "/health", host=f"localhost:{port}")[0] == 200
    assert answers_correctly(port, small_model)


def test_with_a_token_every_post_must_carry_it(small_model):
    from checks.serve_check import ServiceProcess

    svc = ServiceProcess(small_model.parent, "--model", str(small_model), "--workers", "1", "--token", "s3cret")
    try:
        image, ctype = jpeg(), ("Content-Type", "image/jpeg")
        status, body = _raw(svc.port, "POST", "/v1/classify", image, [ctype])
        assert status == 401 and body["error"]["kind"] == "unauthorized"
        assert _raw(svc.port, "POST", "/v1/classify", image, [ctype, ("Authorization", "Bearer wrong")])[0] == 401
        assert _raw(svc.port, "POST", "/v1/classify", image, [ctype, ("Authorization", "Bearer s3cret")])[0] == 200
        assert _raw(svc.port, "GET", "/health")[0] == 200  # reading the health is not classifying
    finally:
        svc.stop()



def test_many_large_uploads_at_once_are_bounded_by_the_bodies_budget(small_model):
    """Bodies held at once are capped at four of the largest size: twelve uploads of nearly the largest size at
    once, and those beyond the budget get a JSON 503 as their bytes arrive, not a share of memory."""
    from checks.serve_check import ServiceProcess, at_once

    svc = ServiceProcess(small_model.parent, "--model", str(small_model), "--workers", "1", "--max-bytes", "2000000",
                         "--queue", "16")
    try:
        statuses = at_once(svc.port, b"\xff\xd8" + b"\0" * 1_900_000, 12)  # not a decodable JPEG: 422 when read
        assert set(statuses) <= {422, 503} and 503 in statuses, statuses  # how many depends on arrival order
        metrics = ask(svc.port, "GET", "/metrics")[2].decode()
        assert 'edgeclf_request_errors_total{kind="busy"}' in metrics
        assert answers_correctly(svc.port, small_model)
    finally:
        svc.stop()


def test_the_bodies_budget_counts_every_request_until_it_is_answered():
    from edge_runtime.serve import BodyBytes, HTTPError

    bodies = BodyBytes(10)
    first, second = bodies.share(), bodies.share()
    first.take(6)
    with pytest.raises(HTTPError) as e:
        second.take(5)
    assert e.value.status == 503 and e.value.headers == {"Retry-After": "1"}
    first.release()
    second.take(5)
    assert bodies.held == 5


# ---------------------------------------------------------------- special files, loops, names

def test_a_fifo_is_an_error_line_not_a_hang_in_predict_and_watch(small_model, tmp_path):
    import os

    from conftest import run_cli

    folder = tmp_path / "drop"
    folder.mkdir()
    make_image((200, 40, 40), 40).save(folder / "a.png")
    os.mkfifo(folder / "pipe.jpg")  # opening it for reading would wait for a writer for ever
    proc = run_cli("-m", "edge_runtime", "predict", "--model", str(small_model), str(folder / "pipe.jpg"),
                   str(folder / "a.png"), timeout=60)
    assert proc.returncode == 2 and "pipe.jpg: not a regular file (a FIFO)" in proc.stderr, proc.stderr
    assert "a.png: " in proc.stdout  # and the run went on
    out = tmp_path / "out.jsonl"
    proc = run_cli("-m", "edge_runtime", "watch", str(folder), "--model", str(small_model), "--once", "--settle", "0",
                   "--out", str(out), timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "top_k" in rows["a.png"] and "not a regular file" in rows["pipe.jpg"]["error"], rows


def test_a_glob_through_a_symlink_loop_names_each_image_once_and_ends(small_model, tmp_path):
    from conftest import run_cli

    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    make_image((200, 40, 40), 40).save(root / "one.png")
    make_image((40, 200, 40), 40).save(root / "sub" / "two.png")
    (root / "sub" / "up").symlink_to(root)  # a loop: photos/sub/up/sub/up/...
    (root / "again").symlink_to(root / "sub")  # and a second way into sub
    for arg in (f"{root}/**/*.png", str(root), f"{root}/*"):
        proc = run_cli("-m", "edge_runtime", "predict", "--model", str(small_model), "--json", arg, timeout=60)
        assert proc.returncode == 0, proc.stderr
        images = [json.loads(line)["image"] for line in proc.stdout.splitlines()]
        assert sorted(images) == sorted([str(root / "one.png"), str(root / "sub" / "two.png")]), (arg, images)


def test_a_file_name_that_is_not_utf8_is_printed_escaped_on_a_strict_utf8_terminal(small_model, tmp_path):
    import os

    from conftest import run_cli

    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    make_image((200, 40, 40), 40).save(tmp_path / name)
    make_image((40, 200, 40), 40).save(tmp_path / "plain.png")
    proc = run_cli("-m", "edge_runtime", "predict", "--model", str(small_model), str(tmp_path),
                   env={"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "caf\\xe9.png: " in proc.stdout and "plain.png: " in proc.stdout, proc.stdout


# ---------------------------------------------------------------- a bundle that cannot be quietly altered

@pytest.fixture(scope="module")
def built_bundle(tiny_export, tmp_path_factory):
    """The tiny run's tflite-int8 bundle, built twice; (tarball, the other build, the manifest's checksum)."""
    import shutil

    from export.bundle import build
    from runlib.run_folder import Run

    tmp = tmp_path_factory.mktemp("bundles")
    run = Run(tmp / tiny_export.path.name)  # without whatever benchmark another test ran
    shutil.copytree(tiny_export.path, run.path, ignore=shutil.ignore_patterns("benchmark"))
    first = build(run, "tflite-int8", tmp / "a")
    second = build(run, "tflite-int8", tmp / "b")
    return first, second


def unpack(tarball, where):
    import tarfile

    with tarfile.open(tarball) as tar:
        tar.extractall(where, filter="data")
    return next(where.iterdir())


def test_two_builds_of_a_bundle_are_byte_for_byte_the_same_and_carry_a_checksum(built_bundle):
    import hashlib

    first, second = built_bundle
    assert first.read_bytes() == second.read_bytes()
    digest, name = (first.parent / f"{first.name}.sha256").read_text().split()
    assert name == first.name and digest == hashlib.sha256(first.read_bytes()).hexdigest()


def test_no_tampering_passes_selfcheck(built_bundle, tmp_path):
    import hashlib

    from conftest import run_cli

    def selfcheck(bundle, *args):
        return run_cli("-m", "edge_runtime", "selfcheck", "--bundle", str(bundle), *args, timeout=120)

    pristine = unpack(built_bundle[0], tmp_path / "pristine")
    expect = hashlib.sha256((pristine / "manifest.json").read_bytes()).hexdigest()
    ok = selfcheck(pristine, "--expect", expect)
    assert ok.returncode == 0 and ok.stdout.startswith("ok    files:"), ok.stdout + ok.stderr

    def swap_labels(b):
        lines = (b / "labels.txt").read_text().splitlines()
        (b / "labels.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")

    def drop_a_checksum(b):
        m = json.loads((b / "manifest.json").read_text())
        del m["variants"]["tflite-int8"]["sha256"]
        (b / "manifest.json").write_text(json.dumps(m))

    def drop_the_checksum_list(b):
        m = json.loads((b / "manifest.json").read_text())
        del m["bundle"]["files"]
        (b / "manifest.json").write_text(json.dumps(m))

    def change_a_reference_probability(b):
        import numpy as np

        with np.load(b / "reference" / "probabilities.npz") as z:
            probs = {k: z[k] for k in z.files}
        probs["tflite-int8"][0] = probs["tflite-int8"][0][::-1]
        np.savez(b / "reference" / "probabilities.npz", **probs)

    def list_a_file_outside(b):
        m = json.loads((b / "manifest.json").read_text())
        m["bundle"]["files"]["../../outside.txt"] = "0" * 64
        (b / "manifest.json").write_text(json.dumps(m))

    def point_the_reference_outside_and_rehash(b):  # the attacker also updates the checksum list
        ref = b / "reference" / "reference.json"
        meta = json.loads(ref.read_text())
        meta["pixels"] = "../../../etc/hostname"
        ref.write_text(json.dumps(meta))
        m = json.loads((b / "manifest.json").read_text())
        m["bundle"]["files"]["reference/reference.json"] = hashlib.sha256(ref.read_bytes()).hexdigest()
        (b / "manifest.json").write_text(json.dumps(m))

    def change_a_model_byte(b):
        data = bytearray((b / "model-int8.tflite").read_bytes())
        data[len(data) // 2] ^= 1
        (b / "model-int8.tflite").write_bytes(bytes(data))

    cases = [swap_labels, drop_a_checksum, drop_the_checksum_list, change_a_reference_probability, list_a_file_outside,
             point_the_reference_outside_and_rehash, change_a_model_byte]
    for tamper in cases:
        bundle = unpack(built_bundle[0], tmp_path / tamper.__name__)
        tamper(bundle)
        for args in ((), ("--expect", expect)):
            proc = selfcheck(bundle, *args)
            assert proc.returncode in (1, 2), (tamper.__name__, args, proc.stdout, proc.stderr)
            assert "Traceback" not in proc.stderr, proc.stderr
        selected = run_cli("-m", "edge_runtime", "select", "--bundle", str(bundle), "--max-seconds", "0.2", timeout=120)
        assert selected.returncode != 0 and not (bundle / "selection.json").exists(), (tamper.__name__, selected.stdout)


# ---------------------------------------------------------------- memory bounded by design

def test_the_service_stays_under_300_mb_on_the_worst_images_and_gives_the_memory_back(small_model, tmp_path):
    from checks.serve_check import ServiceProcess, at_once

    from checks.bomb_check import make_bombs, memory_mb, warm_up

    bombs = make_bombs(tmp_path)
    svc = ServiceProcess(small_model.parent, "--model", str(small_model), "--workers", "2", "--max-bytes", "20000000")
    try:
        assert answers_correctly(svc.port, small_model)
        warm_up(svc.port)
        start = memory_mb(svc.proc.pid, "VmRSS")
        for name, (path, expected) in bombs.items():
            data = path.read_bytes()
            statuses = at_once(svc.port, data, 2)  # two at once: the large decodes take turns
            assert statuses == [expected, expected], (name, statuses)
        peak = memory_mb(svc.proc.pid, "VmHWM")
        time.sleep(1)
        after = memory_mb(svc.proc.pid, "VmRSS")
        assert answers_correctly(svc.port, small_model)
    finally:
        svc.stop()
    assert peak <= 300, peak
    assert after <= start * 1.1, (start, after)


def test_sigterm_stops_watch_within_one_batch_however_many_images_wait(small_model, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    folder = tmp_path / "trap"
    folder.mkdir()
    for i in range(400):
        make_image((200, 40, 40), 64, seed=i).save(folder / f"{i:04d}.png")
    os.mkfifo(folder / "pipe.png")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "watch", str(folder), "--model", str(small_model),
                             "--settle", "0", "--out", str(out), "--duration", "120"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (not out.exists() or not out.read_text()) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # until the first batch is written
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        proc.wait(timeout=30)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    written = len(out.read_text().splitlines())
    assert proc.returncode == 0, proc.stderr.read()
    assert written < 401, written  # it stopped before the rest, FIFO included
    assert stopped_after < 10, stopped_after  # one batch of 16 small images, well within
