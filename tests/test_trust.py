"""Results you can trust: one writer per run, no leakage between subsets, provenance end to end, hostile
files refused in one line, and crashes survived."""
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, REPO, TINY_ARGS, assert_one_line_error, make_image, make_tree, run_cli
from runlib.run_folder import Run


def copy_run(run, dst):
    shutil.copytree(run.path, dst, ignore=shutil.ignore_patterns("benchmark"))
    return Run(dst)


# ---------------------------------------------------------------- one writer per run

def hold(run_path, what="train"):
    """Another process holding the run's lock, as a running command would; (process, its pid)."""
    code = ("import sys, time; from runlib.lock import RunLock; RunLock(sys.argv[1], sys.argv[2]).__enter__(); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_path), what], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "held"
    return proc


EDGECLF = ("-m", "edgeclf.cli")


def test_a_second_command_on_a_run_in_use_is_refused_naming_the_holder(tiny_export, tmp_path):
    run = copy_run(tiny_export, tmp_path / "busy")
    holder = hold(run.path)
    try:
        commands = {
            "export": ("export", "--run", str(run.path), "--variants", "tflite-fp32"),
            "benchmark": ("benchmark", "--run", str(run.path)),
            "bundle": ("bundle", "--run", str(run.path), "--variant", "tflite-fp32", "--dist", str(tmp_path)),
            "train --overwrite": ("train", "--data", str(run.data_root()), "--run", str(run.path), "--overwrite",
                                  *TINY_ARGS),
            "pi-check": ("pi-check", "--run", str(run.path), "--variant", "tflite-fp32", "--dist", str(tmp_path)),
        }
        for args in commands.values():
            proc = run_cli(*EDGECLF, *args)
            assert_one_line_error(proc, f"run {run.path} is in use by pid {holder.pid}", "-c")
        assert run.finished and run.model.exists()  # --overwrite did not remove what another process holds
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock of the killed holder: no stale lock
    proc = run_cli(*EDGECLF, "bundle", "--run", str(run.path), "--variant", "tflite-fp32", "--dist", str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_two_exports_of_one_run_at_once_one_waits_its_turn(tiny_export, tmp_path):
    """Two real processes: the second is refused while the first exports, and the manifest stays whole."""
    run = copy_run(tiny_export, tmp_path / "twice")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, *EDGECLF, "export", "--run", str(run.path), "--variants", "tflite-fp32"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = run.path.parent / f".{run.path.name}.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    second = run_cli(*EDGECLF, "export", "--run", str(run.path), "--variants", "tflite-fp16")
    assert_one_line_error(second, "is in use by pid", str(first.pid))
    assert first.wait(600) == 0, first.stderr.read()[-2000:]
    manifest = json.loads(run.export_manifest.read_text())
    from edge_runtime.files import sha256_file

    for entry in manifest["variants"].values():
        assert sha256_file(run.export_dir / entry["file"]) == entry["sha256"]


# ---------------------------------------------------------------- no leakage

def test_copies_and_near_copies_never_span_two_subsets(tmp_path):
    """Exact copies (also under another name and class), resized, recompressed and lightly cropped copies are
    planted across classes; every group lands in one subset, and the same bytes under two labels is left out."""
    from train import data as D
    from train.duplicates import group

    root = make_tree(tmp_path / "images", {"red": 30, "green": 30, "blue": 30}, size=64)
    rng = random.Random(1)
    planted = []
    for i in range(12):
        src_cls, dst_cls = rng.sample(["red", "green", "blue"], 2)
        src = root / src_cls / f"{i:03d}.png"
        img = Image.open(src).convert("RGB")
        w, h = img.size
        kind = ["copy", "resized", "jpeg", "cropped"][i % 4]
        # exact copies in their own class (in another they are a conflict, below); near copies anywhere
        suffix = "jpg" if kind == "jpeg" else "png"
        dst = root / (src_cls if kind == "copy" else dst_cls) / f"planted-{i:02d}-{kind}.{suffix}"
        if kind == "copy":
            shutil.copy(src, dst)
        elif kind == "resized":
            img.resize((w // 2, h // 2)).save(dst)
        elif kind == "jpeg":
            img.save(dst, quality=60)
        else:
            img.crop((3, 3, w - 3, h - 3)).save(dst)
        planted.append((src.relative_to(root).as_posix(), dst.relative_to(root).as_posix(), kind))
    conflict = root / "green" / "conflict.png"
    shutil.copy(root / "red" / "020.png", conflict)  # the same bytes labelled red and green
    entries, empty = D.list_folder(root)
    samples, report = D.scan(entries, root, empty)
    kept, groups, dup = group(samples, [s.phash for s in samples])
    D.split(kept, 0.15, 0.15, 0, groups)
    subset = {s.path: s.subset for s in kept}
    assert all(len({subset[s.path] for s in g}) == 1 for g in groups)
    for a, b, kind in planted:
        if a in subset and b in subset:
            assert subset[a] == subset[b], (a, b, kind)
    assert "red/020.png" not in subset and "green/conflict.png" not in subset
    assert dup["conflicting_files"] == 2 and dup["conflicts"][0]["labels"] == ["green", "red"]
    assert dup["exact_copies"] == 3 and dup["near_pairs"] >= 9 and dup["near_pairs_across_classes"] >= 9
    # reported, not grouped, when near grouping is off: exact copies still are
    kept, groups, dup = group(samples, [s.phash for s in samples], near=False)
    assert dup["grouped_for_split"] == {"exact": True, "near": False} and dup["near_pairs"] >= 9
    assert max(len(g) for g in groups) == 2  # only the exact copies


def test_the_split_is_unchanged_where_there_are_no_copies(tmp_path):
    from train import data as D

    def samples():
        return [D.Sample(f"{c}/{i}.png", c) for c, n in (("a", 40), ("b", 20), ("c", 7)) for i in range(n)]

    alone = {s.path: s.subset for s in D.split(samples(), 0.15, 0.15, seed=3)}
    each = samples()
    grouped = {s.path: s.subset for s in D.split(each, 0.15, 0.15, seed=3, groups=[[s] for s in each])}
    assert alone == grouped and set(alone.values()) == {"train", "val", "test"}


# ---------------------------------------------------------------- provenance

def test_an_edited_split_and_a_changed_qat_source_are_refused(tiny_export, tmp_path):
    run = copy_run(tiny_export, tmp_path / "prov")
    source = run.export_dir / "model-qat-source.h5"
    with open(source, "ab") as f:
        f.write(b"\0")
    proc = run_cli(*EDGECLF, "benchmark", "--run", str(run.path), "--variants", "tflite-fp32,tflite-qat-int8",
                   "--max-seconds", "1")
    assert proc.returncode == 1 and "its float source model-qat-source.h5 changed since export" in proc.stderr
    lines = run.split_file.read_text().splitlines()
    run.split_file.write_text("\n".join([lines[0], *reversed(lines[1:])]).replace(",test,", ",train,", 1) + "\n")
    for command in (("export", "--run", str(run.path), "--variants", "tflite-fp32"), ("benchmark", "--run", str(run.path))):
        assert_one_line_error(run_cli(*EDGECLF, *command), "split.csv changed since training wrote it")


def test_the_benchmark_report_records_what_it_measured(tiny_export, tmp_path):
    from edge_runtime.files import sha256_file

    run = copy_run(tiny_export, tmp_path / "measured")
    proc = run_cli(*EDGECLF, "benchmark", "--run", str(run.path), "--variants", "tflite-int8,onnx-fp32",
                   "--accept-inconclusive", "--max-seconds", "1")
    # the record is written whatever the verdict: the tiny model's int8 file may flip one of its ~25 test images
    assert proc.returncode == 0 or (proc.returncode == 1 and "parity gate failed for tflite-int8" in proc.stderr), \
        proc.stderr[-2000:]
    report = json.loads((run.benchmark_dir / "report.json").read_text())
    rows = [r for r in report["rows"] if r["status"] == "ok"]
    assert [r["variant"] for r in rows] == ["keras", "tflite-int8", "onnx-fp32"]
    for r in rows:
        assert r["sha256"] == sha256_file(r["file"])
    assert report["gate"]["max_drop"] == 1.0 and report["gate"]["min_agreement"] == 0.98
    assert report["gate"]["images_needed"] == 100 and report["gate"]["images"] == len(report["context"]["labels"])


# ---------------------------------------------------------------- hostile or odd files

def test_manifest_paths_outside_the_export_folder_are_refused(tiny_export, tmp_path):
    run = copy_run(tiny_export, tmp_path / "hostile")
    manifest = json.loads(run.export_manifest.read_text())
    manifest["variants"]["tflite-fp32"]["file"] = "../config.json"
    run.export_manifest.write_text(json.dumps(manifest))
    for command in (("bundle", "--run", str(run.path), "--variant", "tflite-fp32", "--dist", str(tmp_path)),
                    ("benchmark", "--run", str(run.path), "--variants", "tflite-fp32")):
        assert_one_line_error(run_cli(*EDGECLF, *command), "'../config.json' is not a plain file name")
    from edge_runtime.bundle import Bundle
    from edge_runtime.errors import InputError

    with pytest.raises(InputError, match="not a plain file name"):
        Bundle(run.export_dir).model_path("tflite-fp32")


def png_header(width, height):
    """A PNG that declares its size and holds no pixels: what a decompression bomb looks like to open()."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def hostile_files(folder):
    """{name: file} of inputs a camera folder, a web scrape or an attacker could hand the pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    eps = folder / "postscript.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n")
    out["PostScript named .jpg"] = eps
    bomb = folder / "bomb.png"
    bomb.write_bytes(png_header(20000, 20000))  # 45 bytes declaring 400 megapixels
    out["decompression bomb PNG"] = bomb
    trunc = folder / "truncated.jpg"
    buf = io.BytesIO()
    make_image(COLOURS[0], 200).save(buf, "JPEG")
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    out["truncated JPEG"] = trunc
    (folder / "empty.png").write_bytes(b"")
    out["empty file"] = folder / "empty.png"
    (folder / "text.png").write_text("not an image")
    out["text named .png"] = folder / "text.png"
    (folder / "html.jpg").write_text("<html><body>404</body></html>")
    out["HTML page named .jpg"] = folder / "html.jpg"
    return out


def test_hostile_images_are_answered_in_one_line_each(tiny_export, tmp_path):
    files = hostile_files(tmp_path / "hostile")
    model = str(tiny_export.export_dir / "model-int8.tflite")
    for path in files.values():
        proc = run_cli("-m", "edge_runtime", "predict", "--model", model, str(path))
        assert_one_line_error(proc, path.name)
    too_large = run_cli("-m", "edge_runtime", "predict", "--model", model, str(files["decompression bomb PNG"]))
    assert "too large to decode: 20000x20000" in too_large.stderr and "over the decoding budget" in too_large.stderr
    ps = run_cli("-m", "edge_runtime", "predict", "--model", model, str(files["PostScript named .jpg"]))
    assert "not an image" in ps.stderr  # refused, never handed to Ghostscript


def test_a_dataset_skips_and_counts_hostile_files_and_csv_paths_outside_it(tmp_path):
    from train import data as D

    root = make_tree(tmp_path / "data", {"a": 6, "b": 6}, size=32)
    hostile_files(root / "a")
    (tmp_path / "secret.png").write_bytes((root / "a" / "000.png").read_bytes())
    entries, empty = D.list_folder(root)
    samples, report = D.scan(entries, root, empty)
    assert report["images_used"] == 12 and report["skipped"] == 6
    assert report["skipped_by_reason"]["too large"] == 1
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\na/000.png,a\n../secret.png,a\n/etc/hostname,b\nb/000.png,b\n")
    entries, empty = D.list_csv(csv, root)
    samples, report = D.scan(entries, root, empty)
    assert report["images_used"] == 2 and report["skipped_by_reason"] == {"outside the data folder": 2}


def test_labels_with_line_breaks_are_refused_and_others_survive_any_locale(tmp_path):
    from train import data as D
    from edge_runtime.errors import InputError

    root = make_tree(tmp_path / "data", {"a": 3}, size=32)
    csv = tmp_path / "labels.csv"
    csv.write_text('filename,label\na/000.png,"two\nlines"\n', encoding="utf-8")
    with pytest.raises(InputError, match="contains a line break"):
        D.list_csv(csv, root)
    # labels outside ASCII, read and written as UTF-8 whatever the locale's encoding (here ASCII)
    data = make_tree(tmp_path / "utf", {"x": 9, "y": 9}, size=32)
    csv = tmp_path / "utf.csv"
    csv.write_text("filename,label\n" + "".join(f"{c}/{i:03d}.png,{name}\n" for c, name in (("x", "papillon-été"),
                                                                                          ("y", "mariposa-año"))
                                                for i in range(9)), encoding="utf-8")
    ascii_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    probe = run_cli("-c", "import locale; print(locale.getpreferredencoding(False))", env=ascii_locale)
    assert "UTF" not in probe.stdout.upper(), probe.stdout  # the locale really is not UTF-8
    proc = run_cli("-m", "train", "--data", str(data), "--csv", str(csv), "--run", str(tmp_path / "run"), *TINY_ARGS,
                   "--epochs-head", "1", "--epochs-finetune", "0", env=ascii_locale)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Run(tmp_path / "run").class_names() == ["mariposa-año", "papillon-été"]


# ---------------------------------------------------------------- crashes

def test_training_killed_at_random_instants_resumes_consistently(tmp_path, tiny_data):
    """SIGKILL at random instants (bounded: at most 10 kills and 8 minutes), each followed by a check of what
    a resume would read: state.json parses, names a checkpoint that exists and holds that very epoch's weights
    and optimizer, and the history has every epoch once, in order. Then the run finishes with every file."""
    run = Run(tmp_path / "killed")
    args = [sys.executable, "-m", "train", "--data", str(tiny_data), "--run", str(run.path), *TINY_ARGS, "--head", "sgd",
            "--epochs-head", "12", "--epochs-finetune", "6", "--patience", "20"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(7)
    kills, deadline = 0, time.monotonic() + 480
    while kills < 10 and time.monotonic() < deadline:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 10.0))  # start-up takes a few seconds; an epoch of the tiny run about one
        if proc.poll() is not None:
            break  # it finished first
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if not run.state_file.exists():
            continue  # killed before the run folder had its first state
        state = json.loads(run.state_file.read_text())
        epochs = [(h["phase"], h["epoch"]) for h in state["history"] if h.get("C") is None]
        assert epochs == sorted(set(epochs)) and [e for _, e in epochs] == list(range(1, len(epochs) + 1))
        if state.get("last_file"):
            with np.load(run.checkpoints / state["last_file"]) as z:
                assert int(z["phase"]) == state["phase"] and int(z["epoch"]) == state["epoch"]
                if not state.get("phase_complete"):
                    assert any(k.startswith("o") for k in z.files)  # the optimizer of that same epoch
    if not run.finished:
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    state = run.state()
    epochs = [(h["phase"], h["epoch"]) for h in state["history"]]
    assert state["status"] == "finished" and [e for _, e in epochs] == list(range(1, len(epochs) + 1))
    assert [p for p, _ in epochs] == sorted(p for p, _ in epochs) and len(epochs) <= 18
    for f in (run.model, run.labels, run.config_file, run.split_file, run.metrics, run.history, run.curves):
        assert f.exists(), f
    assert not list(run.path.rglob(".~tmp-*"))  # stale temporaries of the killed runs were removed
    assert kills >= 3, f"only {kills} kills landed"
    print(f"kill -9 trials: {kills}, every one resumed consistently")


def test_an_export_killed_midway_leaves_the_previous_files_and_manifest(tiny_export, tmp_path):
    """SIGKILL during a re-export, at several instants: afterwards (and once the next command has tidied) every
    manifest entry still describes the file beside it, and no temporary file or scratch folder is left."""
    from edge_runtime.files import sha256_file
    import tempfile

    run = copy_run(tiny_export, tmp_path / "exp")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, *EDGECLF, "export", "--run", str(run.path), "--variants", "tflite-fp32,tflite-fp16,onnx-fp32"]
    for delay in (6.0, 9.0, 12.0, 15.0, 20.0):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        manifest = json.loads(run.export_manifest.read_text())  # whole, never half-written
        proc = run_cli(*EDGECLF, "bundle", "--run", str(run.path), "--variant", "tflite-fp16", "--dist", str(tmp_path))
        assert proc.returncode == 0, proc.stderr  # the next command under the lock tidies and recovers
        manifest = json.loads(run.export_manifest.read_text())
        for name, entry in manifest["variants"].items():
            if entry.get("status") == "ok":
                assert sha256_file(run.export_dir / entry["file"]) == entry["sha256"], (delay, name)
    proc = run_cli(*EDGECLF, "export", "--run", str(run.path), "--variants", "tflite-fp32")
    assert proc.returncode == 0, proc.stderr
    assert not list(run.path.rglob(".~tmp-*")) and not list(run.export_dir.glob(".*.prev"))
    stale = [p for p in Path(tempfile.gettempdir()).glob("edgeclf-*") if p.is_dir()
             and not Path(f"/proc/{p.name.split('-')[1]}").exists()]
    assert stale == []


def test_recover_puts_back_a_file_the_manifest_still_describes(tmp_path):
    from edge_runtime.files import sha256_file, write_json
    from export.exporter import drop_previous, keep_previous, recover

    out = tmp_path / "export"
    out.mkdir()
    (out / "m.tflite").write_bytes(b"old")
    write_json(out / "manifest.json", {"variants": {"v": {"file": "m.tflite", "sha256": sha256_file(out / "m.tflite")}}})
    keep_previous(out / "m.tflite")  # killed here: the old file is only .m.tflite.prev
    (out / "m.tflite").write_bytes(b"new")  # or here: the new file renamed in, the manifest not yet written
    assert recover(out) == 1 and (out / "m.tflite").read_bytes() == b"old"
    keep_previous(out / "m.tflite")
    (out / "m.tflite").write_bytes(b"new")
    write_json(out / "manifest.json", {"variants": {"v": {"file": "m.tflite", "sha256": sha256_file(out / "m.tflite")}}})
    assert recover(out) == 0 and (out / "m.tflite").read_bytes() == b"new"  # the manifest was written: keep the new
    assert not list(out.glob(".*.prev"))
    drop_previous(out)


# ---------------------------------------------------------------- a gate that says when it cannot judge

def test_the_gate_needs_enough_test_images_to_judge():
    from runlib.metrics import images_to_judge, wilson_interval

    n, rule = images_to_judge(1.0, 0.98)
    assert n == 100 and "100 images" in rule and "93 images" in rule
    assert 100 / n <= 1.0 and wilson_interval(93, 93)[0] >= 0.96 > wilson_interval(92, 92)[0]
    assert images_to_judge(2.0, 0.9)[0] == 50  # a looser budget can be judged on fewer images
    for test_images in (125, 143, 3000):  # the Leeds runs, the demo, the scale check
        assert test_images >= n


def test_too_few_test_images_make_the_gate_inconclusive(tiny_export, tmp_path):
    run = copy_run(tiny_export, tmp_path / "small")
    args = ("benchmark", "--run", str(run.path), "--variants", "tflite-fp32", "--max-seconds", "1")
    proc = run_cli(*EDGECLF, *args)
    assert proc.returncode == 1
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "parity gate inconclusive" in err[0] and "needs at least 100" in err[0]
    report = json.loads((run.benchmark_dir / "report.json").read_text())
    assert report["gate"]["inconclusive"] and "INCONCLUSIVE" in (run.benchmark_dir / "report.md").read_text()
    assert_one_line_error(run_cli(*EDGECLF, "bundle", "--run", str(run.path), "--dist", str(tmp_path)),
                          "no exported variant")  # nothing "passed" that the gate could not judge
    assert run_cli(*EDGECLF, *args, "--accept-inconclusive").returncode == 0
