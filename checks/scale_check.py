"""`make scale-check`: a generated dataset of many classes and images through train, export and benchmark.

It answers the questions that only show at scale, and writes the answers to
runs/scale-check/scale_check.{json,md}:
- how long the data scan takes (every file is decoded once and hashed),
- the training process's peak memory, and whether tf.data cached the decoded pixels,
- images per second of the input pipeline alone against the training step alone
  (the pipeline must not be the bottleneck: at least 1.5x the step's rate),
- that export and benchmark finish and their reports stay readable with hundreds of classes.

The dataset is written once to data/scale-<classes>x<per-class>/ and reused; the run folder
runs/scale-check (or --run) belongs to this check and is replaced each time.
"""
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.files import write_json, write_text
from runlib.progress import logger

PIPELINE_MIN_RATIO = 1.5


log = logger("scale-check")


def class_look(c):
    """A class is a colour and a stripe pattern: hundreds of classes a small network can tell apart."""
    rng = np.random.default_rng(10_000 + c)
    return rng.integers(30, 226, 3), int(rng.integers(2, 7)), int(rng.integers(0, 4))


def _write_class(args):
    from PIL import Image

    root, c, count, size = args
    colour, period, orientation = class_look(c)
    d = Path(root) / f"class_{c:03d}"
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    along = (xx, yy, xx + yy, xx - yy)[orientation]
    for i in range(count):
        rng = np.random.default_rng(c * 100_000 + i)
        stripes = ((along + rng.integers(0, period * 2)) // period) % 2
        img = colour[None, None] * (0.55 + 0.45 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:04d}.jpg", quality=90)
    return count


def make_dataset(root, classes, per_class, size=48):
    """root/class_NNN/*.jpg, plus a few files a real folder has: a truncated JPEG, a text file, grayscale and RGBA images."""
    root = Path(root)
    marker = root / ".complete"
    if marker.exists() and marker.read_text(encoding="utf-8") == f"{classes}x{per_class}x{size}\n":
        return root
    log(f"writing {classes * per_class} images in {classes} classes to {root}")
    t0 = time.time()
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_write_class, [(str(root), c, per_class, size) for c in range(classes)], chunksize=8))
    from PIL import Image

    good = (root / "class_000" / "0000.jpg").read_bytes()
    (root / "class_001" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "class_002" / "notes.jpg").write_text("not an image")
    Image.open(root / "class_003" / "0000.jpg").convert("L").save(root / "class_003" / "gray.png")
    Image.open(root / "class_004" / "0000.jpg").convert("RGBA").save(root / "class_004" / "rgba.png")
    marker.write_text(f"{classes}x{per_class}x{size}\n")
    log(f"dataset written in {time.time() - t0:.0f} s")
    return root


def step(name, argv):
    """Run one pipeline stage as its own process (as `make` would); its time, peak memory and exit code."""
    log(f"{name}: {' '.join(argv)}")
    t0 = time.time()
    proc = subprocess.run([sys.executable, *argv])
    seconds = time.time() - t0
    # the largest peak of any child waited for so far: after the first stage (train), exactly its peak
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    log(f"{name}: exit {proc.returncode} in {seconds:.0f} s")
    return {"seconds": round(seconds, 1), "peak_rss_mb_so_far": round(peak_mb), "exit_code": proc.returncode}


def pipeline_against_step(run, batches=40, steps=8):
    """Images per second of the training input pipeline alone (decoding every image: an uncached epoch,
    the slowest one) and of the training step alone on one fixed batch."""
    from runlib.tf_setup import import_tensorflow

    import_tensorflow()
    from train.augment import augmenter
    from train.model import build_model, compile_for_training, set_phase
    from train.pipeline import Images, dataset

    cfg, samples = run.config(), run.split()
    names = run.class_names()
    index = {c: i for i, c in enumerate(names)}
    train = [s for s in samples if s.subset == "train"]
    aug = augmenter(cfg["augment"], cfg["seed"], cfg.get("flip", True))
    ds = dataset(Images(Path(cfg["data_root"]), train, index, cfg["image_size"]), cfg["batch_size"], training=True,
                 augment=aug, seed=cfg["seed"], cache=False)
    it = iter(ds.repeat())  # small sets: decode again rather than run out
    for _ in range(3):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    pipeline = n / (time.perf_counter() - t0)

    model = build_model({**cfg, "weights": "none"}, len(names))
    set_phase(model, 1, cfg)
    compile_for_training(model, cfg, cfg["lr"])  # the very step training runs
    x, y = next(it)
    for _ in range(2):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    step_rate = steps * int(x.shape[0]) / (time.perf_counter() - t0)
    return {"pipeline_images_per_s": round(pipeline, 1), "train_step_images_per_s": round(step_rate, 1),
            "ratio": round(pipeline / step_rate, 2), "batch_size": cfg["batch_size"]}


def markdown(r):
    t, p = r["stages"], r["pipeline"]
    b = r.get("benchmark_report", {})
    lines = [
        f"# Scale check: {r['classes']} classes, {r['images_listed']} files", "",
        f"Command: `{r['command']}`; backbone {r['backbone']} at {r['image_size']} px, {r['epochs']} epoch(s), "
        f"batch {p['batch_size']}; variant {r['variant']}. CPU flags: {' '.join(r['cpu_flags'])}.", "",
        "| measure | value |", "|---|---|",
        f"| images used / skipped | {r['images_used']} / {r['skipped']} "
        f"({', '.join(f'{k}: {v}' for k, v in r['skipped_by_reason'].items()) or 'none'}) |",
        f"| data scan (decode and hash every file) | {r['scan_seconds']:.1f} s |",
        f"| tf.data cache | {r['cache']} |",
        f"| train (scan, {r['epochs']} epoch(s), evaluation) | {t['train']['seconds']:.0f} s, "
        f"peak memory {t['train']['peak_rss_mb_so_far']} MB |",
        f"| input pipeline alone (uncached, augmented) | {p['pipeline_images_per_s']:.0f} images/s |",
        f"| training step alone | {p['train_step_images_per_s']:.0f} images/s |",
        f"| pipeline / step | **{p['ratio']:.1f}x** (needs at least {PIPELINE_MIN_RATIO}x) |",
        f"| export of {r['variant']} | {t['export']['seconds']:.0f} s (exit {t['export']['exit_code']}) |",
        f"| benchmark of {r['variant']} | {t['benchmark']['seconds']:.0f} s (exit {t['benchmark']['exit_code']}) |",
        f"| test top-1 (Keras / {r['variant']}) | {b.get('keras_top1', float('nan')):.3f} / "
        f"{b.get('variant_top1', float('nan')):.3f} |",
        f"| benchmark report.md | {b.get('report_lines', 0)} lines |", "",
    ]
    return "\n".join(lines)


def run_command(o):
    """`edgeclf scale-check`: options by name (runlib/options.py)."""
    from runlib.options import resolve
    from runlib.run_folder import Run

    c = resolve("scale-check", o)  # each class needs val and test images: --per-class at least 10
    data = make_dataset(c.data or f"data/scale-{c.classes}x{c.per_class}", c.classes, c.per_class)
    run = Run(c.run)
    stages = {"train": step("train", ["-m", "train", "--data", str(data), "--run", str(run.path), "--overwrite",
                                      "--backbone", c.backbone, "--weights", "none", "--image-size", str(c.image_size),
                                      "--epochs-head", str(c.epochs), "--epochs-finetune", "0",
                                      "--batch-size", str(c.batch_size), "--augment", "0.5"])}
    if stages["train"]["exit_code"]:
        raise InputError("training failed; see its output above")
    stages["export"] = step("export", ["-m", "export", "--run", str(run.path), "--variants", c.variant])
    stages["benchmark"] = step("benchmark", ["-m", "benchmark", "--run", str(run.path), "--variants", c.variant])
    log("input pipeline against training step")
    result = summary(run, c, stages, pipeline_against_step(run))
    write_json(run.path / "scale_check.json", result)
    write_text(run.path / "scale_check.md", markdown(result))
    print(markdown(result))
    # exit 1 from the benchmark is its gate's verdict, reported above; from export it is a failed export
    failed = [k for k, v in stages.items() if v["exit_code"] not in ((0, 1) if k == "benchmark" else (0,))]
    if failed or not result["pipeline_fast_enough"]:
        raise InputError(f"scale check failed: {', '.join(failed) or 'input pipeline slower than 1.5x the step'}")
    log(f"wrote {run.path / 'scale_check.md'}")
    return 0


def summary(run, c, stages, pipe):
    """scale_check.json: the data scan, the cache policy, each stage's seconds and memory, the benchmark's top-1."""
    from edge_runtime.machine import cpu_flags
    from train.data import cache_in_memory, decoded_bytes

    report = json.loads(run.data_report.read_text(encoding="utf-8"))
    cfg = run.config()
    n_cached = sum(1 for s in run.split() if s.subset in ("train", "val"))
    mib = decoded_bytes(n_cached, cfg["image_size"]) / 2**20
    fits = cache_in_memory(n_cached, cfg["image_size"], cfg["cache_limit_gb"])
    bench = {}
    if run.benchmark_dir.joinpath("report.json").exists():
        rows = {row["variant"]: row for row in json.loads(
            (run.benchmark_dir / "report.json").read_text(encoding="utf-8"))["rows"]}
        bench = {"keras_top1": rows.get("keras", {}).get("top1", float("nan")),
                 "variant_top1": rows.get(c.variant, {}).get("top1", float("nan")),
                 "report_lines": len((run.benchmark_dir / "report.md").read_text(encoding="utf-8").splitlines())}
    return {
        "command": " ".join(["edgeclf scale-check", *sys.argv[2:]]),
        "classes": c.classes, "images_listed": report["files_listed"], "images_used": report["images_used"],
        "skipped": report["skipped"], "skipped_by_reason": report["skipped_by_reason"],
        "scan_seconds": report.get("scan_seconds"), "backbone": c.backbone, "image_size": c.image_size,
        "epochs": c.epochs, "variant": c.variant, "cpu_flags": cpu_flags(),
        "cache": (f"in memory ({mib:.0f} MiB of decoded uint8, under the {cfg['cache_limit_gb']:g} GiB limit)" if fits
                  else f"off ({mib:.0f} MiB would exceed the {cfg['cache_limit_gb']:g} GiB limit)"),
        "stages": stages, "pipeline": pipe, "benchmark_report": bench,
        "pipeline_fast_enough": pipe["ratio"] >= PIPELINE_MIN_RATIO,
    }
