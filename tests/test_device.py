"""The device side of a bundle: streaming predict, selfcheck, select, serve and watch."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from conftest import COLOURS, REPO, assert_one_line_error, make_image
from edge_runtime.classifier import Classifier
from edge_runtime.files import sha256_file, write_json
from edge_runtime.preprocess import contract, load_pixels


def edge(*args, cwd=REPO, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_runtime", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- streaming predict

def test_predict_streams_files_folders_and_globs_and_reports_a_bad_file_on_its_own_line(tiny_export, tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, c in enumerate(COLOURS[:3]):
        make_image(c, 40, seed=i).save(photos / f"{i}.png")
    make_image(COLOURS[0], 40, seed=9).save(photos / "sub" / "deep.jpg")
    (photos / "notes.txt").write_text("not an image, and not named like one: a folder walk skips it")
    (photos / ".hidden.png").write_bytes(b"skipped too")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    single = tmp_path / "single.png"
    make_image(COLOURS[1], 40, seed=5).save(single)
    model = tiny_export.export_dir / "model-int8.tflite"
    # the bad file sits in the middle, and the batch of 2 makes the stream cross batch boundaries around it
    proc = edge("predict", "--model", str(model), str(single), str(bad), str(photos), str(tmp_path / "photos" / "*.png"),
                "--json", "--top-k", "2", "--batch", "2")
    assert proc.returncode == 2, proc.stderr
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    images = [r["image"] for r in rows]
    assert images == [str(single), str(bad), *[str(photos / f"{i}.png") for i in range(3)], str(photos / "sub" / "deep.jpg"),
                      *[str(photos / f"{i}.png") for i in range(3)]]
    assert "error" in rows[1] and "not an image" in rows[1]["error"] or "unreadable" in rows[1]["error"]
    clf = Classifier(model)
    for r in rows[:1] + rows[2:]:
        expected = clf.predict(r["image"], top_k=2)
        assert [t["label"] for t in r["top_k"]] == [l for l, _ in expected]
        assert [t["probability"] for t in r["top_k"]] == pytest.approx([p for _, p in expected], abs=1e-6)
    assert "1 of 9 images could not be classified" in proc.stderr
    text = edge("predict", "--model", str(model), str(photos))
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 4 and text.stdout.startswith(str(photos / "0.png"))
    assert_one_line_error(edge("predict", "--model", str(model), str(tmp_path / "nothing-*.png")), "no such file")


def test_predict_keeps_memory_flat_by_reading_in_batches(tiny_export, tmp_path, monkeypatch):
    """stream() never holds more than one batch of decoded images."""
    clf = Classifier(tiny_export.export_dir / "model-fp32.tflite")
    seen = []
    real = clf.probabilities
    monkeypatch.setattr(clf, "probabilities", lambda px: seen.append(len(px)) or real(px))
    images = [make_image(COLOURS[i % 3], 32, seed=i) for i in range(37)]
    results = list(clf.stream(images, top_k=1, batch=8))
    assert len(results) == 37 and max(seen) == 8 and sum(seen) == 37


# ---------------------------------------------------------------- a bundle from the tiny run

@pytest.fixture(scope="module")
def device(tiny_export, tmp_path_factory):
    """The tiny run's bundle of two candidates, unpacked as on a device."""
    from export.bundle import build

    work = tmp_path_factory.mktemp("device")
    out = build(tiny_export, ["tflite-int8", "onnx-int8"], work / "dist", count=6)
    with tarfile.open(out) as tar:
        tar.extractall(work / "unpacked", filter="data")
    return work / "unpacked" / tiny_export.path.name


def copy_bundle(device, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(device, dst)
    return dst


def test_selfcheck_passes_on_the_machine_that_built_the_bundle(device, tmp_path):
    proc = edge("selfcheck", "--json", "out.json", cwd=copy_bundle(device, tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [l.split(":")[0] for l in lines] == ["ok    files", "ok    decode", "ok    tflite-int8", "ok    onnx-int8"]
    assert "6/6 same top-1" in lines[2]


def test_selfcheck_fails_in_one_line_when_a_file_was_altered(device, tmp_path):
    bundle = copy_bundle(device, tmp_path)
    with open(bundle / "model-int8.onnx", "r+b") as f:  # one byte changed, size kept
        f.seek(-100, 2)
        b = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    proc = edge("selfcheck", cwd=bundle)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()  # the bundle's own checksums catch it first, and nothing is run
    assert lines == ["FAIL  files: model-int8.onnx changed since the bundle was built"], lines
    assert "altered" in proc.stderr
    seal(bundle)  # with the checksum list rewritten to match, the manifest's own entry for the file still catches it
    proc = edge("selfcheck", cwd=bundle)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and lines[2].startswith("ok    tflite-int8")
    assert lines[3].startswith("FAIL  onnx-int8") and "checksum mismatch" in lines[3] and len(lines) == 4
    assert "1 check(s) failed" in proc.stderr


def test_selfcheck_fails_when_this_runtime_rounds_differently_beyond_the_tolerance(device, tmp_path):
    """A runtime that rounds one output two steps away (TFLite integer files are allowed one) fails; one
    step is within tolerance."""
    from edge_runtime.bundle import Bundle
    from edge_runtime.selfcheck import tolerance

    bundle = copy_bundle(device, tmp_path)
    ref = Bundle(bundle).reference()
    probs = dict(ref["probabilities"])
    scale = Classifier(bundle / "model-int8.tflite").output.scale
    tol, what = tolerance("tflite", "integer", scale)
    assert what.startswith("1 output") and tol == pytest.approx(scale, rel=1e-3)

    def recorded(shift):
        p = probs["tflite-int8"].copy()
        p[3, p[3].argmin()] += shift  # as if the host had rounded this output differently
        np.savez(bundle / "reference" / "probabilities.npz", **dict(probs, **{"tflite-int8": p}))
        seal(bundle)
        return edge("selfcheck", cwd=bundle)

    assert recorded(1.0 * scale).returncode == 0
    proc = recorded(2.0 * scale)
    assert proc.returncode == 1
    fail = [l for l in proc.stdout.splitlines() if l.startswith("FAIL")]
    assert len(fail) == 1 and fail[0].startswith("FAIL  tflite-int8: 1 of 6 images") and "03-" in fail[0]


def test_selfcheck_notices_pixels_that_decode_differently(device, tmp_path):
    bundle = copy_bundle(device, tmp_path)
    pixels = np.load(bundle / "reference" / "pixels.npy")
    pixels[0, 0, 0, 0] ^= 1
    np.save(bundle / "reference" / "pixels.npy", pixels)
    seal(bundle)  # as if the build machine had recorded these pixels
    proc = edge("selfcheck", cwd=bundle)
    assert proc.returncode == 1 and proc.stdout.splitlines()[1].startswith("FAIL  decode: 1 of 6 reference images")


# ---------------------------------------------------------------- select

def _tflite(model, path):
    import tensorflow as tf

    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def speed_bundle(root):
    """A bundle of two float files of one tiny classifier: `heavy` does 40x the arithmetic of `light`.
    `heavy` is listed first, so it is what runs until `select` has measured."""
    import tf_keras as keras

    def model(width, depth):
        x = inp = keras.Input((48, 48, 3))
        for _ in range(depth):
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))

    keras.utils.set_random_seed(0)
    root.mkdir(parents=True)
    files = {"heavy": model(96, 6), "light": model(8, 2)}
    variants = {}
    for name, m in files.items():
        _tflite(m, root / f"{name}.tflite")
        variants[name] = {"file": f"{name}.tflite", "format": "tflite", "precision": "float32", "status": "ok",
                          "sha256": sha256_file(root / f"{name}.tflite"), "bytes": (root / f"{name}.tflite").stat().st_size}
    (root / "labels.txt").write_text("a\nb\nc\n")
    write_json(root / "manifest.json", {"classes": ["a", "b", "c"], "preprocessing": contract(48, 48),
                                        "variants": variants, "selfcheck": {"kinds": {"heavy": "float", "light": "float"}}})
    (root / "reference" / "images").mkdir(parents=True)
    for i, c in enumerate(COLOURS[:3]):
        make_image(c, 60, seed=i).save(root / "reference" / "images" / f"{i}.png")
    pixels = np.stack([load_pixels(root / "reference" / "images" / f"{i}.png", (48, 48)) for i in range(3)])
    np.save(root / "reference" / "pixels.npy", pixels)
    np.savez(root / "reference" / "probabilities.npz",
             **{n: Classifier(root / f"{n}.tflite", settings={}, threads=1).probabilities(pixels) for n in files})
    write_json(root / "reference" / "reference.json", {
        "images": [{"file": f"images/{i}.png", "label": "abc"[i]} for i in range(3)], "pixels": "pixels.npy",
        "probabilities": "probabilities.npz"})
    return seal(root)


def seal(root):
    """Record every file's checksum in the manifest, as `make bundle` does (selfcheck refuses a bundle without)."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.setdefault("bundle", {})["files"] = {
        p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "selection.json")}
    write_json(root / "manifest.json", manifest)
    return root


def test_select_does_not_choose_a_candidate_that_is_slower_here(tmp_path):
    from edge_runtime.bundle import Bundle
    from edge_runtime.machine import signature

    bundle = speed_bundle(tmp_path / "b")
    img = bundle / "reference" / "images" / "0.png"
    before = edge("predict", str(img), cwd=bundle)
    assert before.returncode == 0 and "heavy.tflite (heavy): no selection on this machine yet" in before.stderr
    proc = edge("select", "--max-seconds", "5", cwd=bundle)
    assert proc.returncode == 0, proc.stderr
    sel = json.loads((bundle / "selection.json").read_text())
    assert sel["choice"] == {"1": "light", "all": "light"}
    assert sel["machine"] == signature() and sel["cpu_flags"] == signature()["cpu_flags"]
    f = sel["figures"]
    assert f["light"]["1"]["p50_ms"] < f["heavy"]["1"]["p50_ms"]
    assert f["light"]["all"]["p50_ms"] < f["heavy"]["all"]["p50_ms"]
    assert "selected: light" in proc.stdout and "| light ◀ 1 thread" in proc.stdout
    after = edge("predict", str(img), cwd=bundle)
    assert after.returncode == 0 and "light.tflite (light): fastest on this machine" in after.stderr
    # a selection measured on another kind of machine is not used here
    sel["machine"] = {"arch": "aarch64", "cpu_flags": ["asimd", "asimddp"]}
    write_json(bundle / "selection.json", sel)
    variant, why = Bundle(bundle).chosen()
    assert variant == "heavy" and "another kind of machine" in why


def test_select_leaves_out_a_file_that_fails_its_selfcheck(tmp_path):
    bundle = speed_bundle(tmp_path / "b")
    probs = dict(np.load(bundle / "reference" / "probabilities.npz"))
    probs["light"] = probs["light"][:, ::-1].copy()  # recorded outputs this machine does not reproduce
    np.savez(bundle / "reference" / "probabilities.npz", **probs)
    seal(bundle)  # as the build machine would have recorded them
    proc = edge("select", "--max-seconds", "2", cwd=bundle)
    assert proc.returncode == 0, proc.stderr
    assert "not a candidate here: FAIL  light" in proc.stdout
    assert json.loads((bundle / "selection.json").read_text())["choice"] == {"1": "heavy", "all": "heavy"}


def test_device_commands_answer_bad_input_in_one_line(tmp_path):
    assert_one_line_error(edge("selfcheck", cwd=tmp_path), "not a bundle")
    assert_one_line_error(edge("select", "--bundle", str(tmp_path / "nowhere")), "not a bundle")
    assert_one_line_error(edge("predict", "x.jpg", cwd=tmp_path), "not a bundle")
    assert_one_line_error(edge("watch", str(tmp_path / "nowhere")), "no such folder")
    assert_one_line_error(edge("serve", "--model", str(tmp_path / "m.tflite")), "no such model file")


# ---------------------------------------------------------------- serve

@pytest.fixture
def big_jpeg():
    from checks.serve_check import big_jpeg

    return big_jpeg()


def test_service_answers_like_predict_and_every_bad_request_with_its_status(tiny_export, tmp_path, big_jpeg):
    from checks.serve_check import ServiceProcess, at_once, multipart, request

    model = tiny_export.export_dir / "model-int8.tflite"
    good = tmp_path / "g.jpg"
    make_image(COLOURS[2], 80, seed=3).save(good, quality=90)
    data = good.read_bytes()
    expected = [{"label": l, "probability": p} for l, p in Classifier(model, threads=1).predict(data, top_k=2)]
    svc = ServiceProcess(tiny_export.export_dir, "--model", str(model), "--max-bytes", "2000000", "--workers", "1",
                  "--queue", "1", "--timeout", "20")
    try:
        p = svc.port
        status, body = request(p, "POST", "/v1/classify?top_k=2", data, "image/jpeg")
        assert status == 200 and body["top_k"] == expected and body["variant"] == "tflite-int8"
        status, body = request(p, "POST", "/v1/classify?top_k=2", *multipart(data))
        assert status == 200 and body["top_k"] == expected
        for args, code, kind in [((data[:300], "image/jpeg"), 422, "bad_image"),
                                  ((b"plain text", "image/png"), 422, "bad_image"),
                                 ((data, "text/plain"), 415, "unsupported_type"), ((b"", "image/jpeg"), 400, "empty"),
                                 ((b"x" * 2_000_001, "image/jpeg"), 413, "too_large"),
                                 ((b"--nope\r\n", "multipart/form-data"), 400, "bad_form")]:
            status, body = request(p, "POST", "/v1/classify", *args)
            assert (status, body["error"]["kind"]) == (code, kind), (args[1], body)
        assert request(p, "POST", "/v1/classify?top_k=0", data, "image/jpeg")[0] == 400
        assert request(p, "GET", "/v1/classify")[0] == 405
        status, info = request(p, "GET", "/v1/model")
        assert status == 200 and info["sha256"] == sha256_file(model) and info["labels"] == ["blue", "green", "red"]
        assert info["preprocessing"]["input_size"] == list(Classifier(model).size)
        assert request(p, "GET", "/health") == (200, {"status": "ok", "variant": "tflite-int8", "workers": 1,
                                                      "queue": 0, "queue_limit": 1})
        # backpressure: one worker, a queue of one, twelve slow uploads at once
        statuses = at_once(p, big_jpeg, 12)
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
        status, body = request(p, "POST", "/v1/classify?top_k=2", data, "image/jpeg")  # and it goes on serving
        assert status == 200 and body["top_k"] == expected
        metrics = request(p, "GET", "/metrics")[1]
        for line in ['edgeclf_request_errors_total{kind="queue_full"}', 'edgeclf_request_errors_total{kind="bad_image"} 2.0',
                     'edgeclf_requests_total{path="/v1/classify",status="200"}', "edgeclf_classify_seconds_bucket",
                     'edgeclf_model_info{', "process_resident_memory_bytes"]:
            assert line in metrics, line
    finally:
        code, output = svc.stop()
    assert code == 0 and "stopped" in output


def test_service_finishes_requests_in_flight_on_sigterm(tiny_export, big_jpeg):
    from checks.serve_check import ServiceProcess, graceful

    svc = ServiceProcess(tiny_export.export_dir, "--model", str(tiny_export.export_dir / "model-fp32.tflite"),
                         "--workers", "1")
    r = graceful(svc, big_jpeg, count=3)
    assert r["answered"] == [200, 200, 200] and r["exit_code"] == 0 and r["said_stopped"]


def test_service_drops_a_client_that_stalls_and_one_that_vanishes(tiny_export):
    from checks.serve_check import ServiceProcess, raw_exchange, request

    svc = ServiceProcess(tiny_export.export_dir, "--model", str(tiny_export.export_dir / "model-int8.tflite"),
                         "--timeout", "2")
    try:
        head = (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 5000\r\n\r\n")
        for _ in range(5):
            raw_exchange(svc.port, head, b"x" * 100, then="close")
        assert raw_exchange(svc.port, head, b"x" * 100, then="answer", wait=15) == 408
        img = make_image(COLOURS[0], 40)
        import io

        buf = io.BytesIO()
        img.save(buf, "PNG")
        assert request(svc.port, "POST", "/v1/classify", buf.getvalue(), "image/png")[0] == 200
        metrics = request(svc.port, "GET", "/metrics")[1]
        assert 'edgeclf_request_errors_total{kind="client_disconnected"} 5.0' in metrics
        assert 'edgeclf_request_errors_total{kind="body_timeout"} 1.0' in metrics
    finally:
        svc.stop()


# ---------------------------------------------------------------- watch

def _lines(out):
    return [json.loads(l) for l in out.read_text().splitlines()]


def test_watch_classifies_each_complete_image_once_across_restarts(tiny_export, tmp_path):
    folder = tmp_path / "trap"
    folder.mkdir()
    old = time.time() - 60
    for i in range(3):
        make_image(COLOURS[i], 40, seed=i).save(folder / f"{i}.jpg")
        os.utime(folder / f"{i}.jpg", (old, old))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    os.utime(folder / "broken.jpg", (old, old))
    make_image(COLOURS[0], 40).save(folder / "incoming.jpg.part", format="JPEG")  # a writer's temporary name
    make_image(COLOURS[1], 40).save(folder / "fresh.jpg")  # just written: not yet settled
    model = str(tiny_export.export_dir / "model-int8.tflite")
    args = ("watch", str(folder), "--model", model, "--once", "--settle", "30")
    first = edge(*args)
    assert first.returncode == 0, first.stderr
    out = folder / "classifications.jsonl"
    rows = _lines(out)
    assert sorted(r["image"] for r in rows) == ["0.jpg", "1.jpg", "2.jpg", "broken.jpg"]
    assert "error" in next(r for r in rows if r["image"] == "broken.jpg")
    expected = Classifier(model).predict(str(folder / "1.jpg"), top_k=5)
    assert [t["label"] for t in next(r for r in rows if r["image"] == "1.jpg")["top_k"]] == [l for l, _ in expected]
    # a restart classifies nothing twice; the settled new image now counts; a torn last line is repaired
    os.utime(folder / "fresh.jpg", (old, old))
    with open(out, "a") as f:
        f.write('{"image": "torn", "si')
    second = edge(*args)
    assert second.returncode == 0, second.stderr
    rows = _lines(out)
    assert sorted(r["image"] for r in rows) == ["0.jpg", "1.jpg", "2.jpg", "broken.jpg", "fresh.jpg"]
    # an image replaced by another (same name) is new
    make_image(COLOURS[2], 40, seed=77).save(folder / "0.jpg")
    os.utime(folder / "0.jpg", (old + 1, old + 1))
    edge(*args)
    assert [r["image"] for r in _lines(out)].count("0.jpg") == 2


def test_watch_killed_mid_run_never_writes_an_image_twice(tiny_export, tmp_path):
    folder = tmp_path / "trap"
    folder.mkdir()
    old = time.time() - 60
    for i in range(60):
        make_image(COLOURS[i % 3], 40, seed=i).save(folder / f"{i:02d}.png")
        os.utime(folder / f"{i:02d}.png", (old, old))
    model = str(tiny_export.export_dir / "model-fp32.tflite")
    out = folder / "classifications.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "edge_runtime", "watch", str(folder), "--model", model, "--interval", "0.05",
           "--settle", "1", "--duration", "60"]
    kills = 0
    for _attempt in range(4):  # bounded: killed with SIGKILL as soon as it has written something new
        before = len(out.read_text().splitlines()) if out.exists() else 0
        if before >= 60:
            break
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) > before:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.wait(30)
    final = edge("watch", str(folder), "--model", model, "--once", "--settle", "1")
    assert final.returncode == 0
    names = [r["image"] for r in _lines(out)]
    assert kills >= 1 and sorted(names) == [f"{i:02d}.png" for i in range(60)], (kills, len(names))


def test_watch_stops_on_sigterm(tiny_export, tmp_path):
    folder = tmp_path / "trap"
    folder.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "watch", str(folder), "--model",
                             str(tiny_export.export_dir / "model-int8.tflite"), "--interval", "0.1", "--duration", "120"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "watching" in out
