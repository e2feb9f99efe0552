"""`python -m checks.bomb_check --model MODEL`: the device service's memory on the worst images under the decoding
budget and on bombs over it, each sent twice at once; prints a Markdown table (docs/trust.md has one).

`--predict [--code DIR]`: instead, the issue's bombs (10000x12000 in six colour modes) through `Classifier.predict`,
one fresh process each, and its peak memory; DIR is the checkout whose edge_runtime runs (a `git worktree` of an
older commit gives the figure before a change).

The service runs on 127.0.0.1 from the model's folder; every image is made here. tests/test_hostile.py sends
the same images and holds the targets (peak <= 300 MB, resident memory back within 10%).
"""
import argparse
import struct
import sys
import tempfile
from pathlib import Path

from edge_runtime.machine import cpu_flags


def make_bombs(folder):
    """The worst images under the decoding budget in each colour mode, a JPEG that must be decoded smaller, and
    the issue's 467 KB PNG of 120 megapixels of RGBA, over it."""
    import math

    from PIL import Image

    from edge_runtime.preprocess import COST_PER_PIXEL, DECODE_BUDGET

    out = {}
    for mode, fmt in [("RGBA", "PNG"), ("I;16", "PNG"), ("RGB", "PNG"), ("LA", "PNG"), ("L", "PNG"), ("RGB", "JPEG")]:
        side = int(math.sqrt(DECODE_BUDGET / COST_PER_PIXEL[mode]))
        path = folder / f"under-{mode.replace(';', '')}.{fmt.lower()}"
        Image.new(mode, (side, side)).save(path, format=fmt)
        out[path.name] = (path, 200)
    for fmt, mode, side, kw in [("GIF", "P", 4096, {}), ("TIFF", "RGB", 4096, {"compression": "tiff_deflate"}),
                                ("WEBP", "RGB", 2800, {"lossless": True})]:  # the other formats, near the budget
        path = folder / f"under-{fmt.lower()}.{fmt.lower()}"
        Image.new(mode, (side, side)).save(path, format=fmt, **kw)
        out[path.name] = (path, 200)
    Image.new("RGB", (4096, 4096)).save(folder / "over.webp", format="WEBP", lossless=True)
    out["over.webp"] = (folder / "over.webp", 422)  # 16 megapixels of WebP: its decoder's own buffers count
    Image.new("RGB", (12000, 10000), (90, 120, 40)).save(folder / "big.jpg", quality=50)
    out["big.jpg"] = (folder / "big.jpg", 200)  # decoded at 1/2 of its size, within the budget
    Image.new("RGBA", (10000, 12000)).save(folder / "over.png")
    out["over.png"] = (folder / "over.png", 422)  # refused from its header
    # headers alone that declare gigapixels: 31 and 54 bytes
    (folder / "over.gif").write_bytes(b"GIF89a" + struct.pack("<HHBBB", 10000, 12000, 0, 0, 0) + b","
                                      + struct.pack("<HHHHB", 0, 0, 10000, 12000, 0) + b"\x02\x02\x44\x01\x00;")
    row = (30000 * 3 + 3) // 4 * 4
    info = struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, row * 30000, 2835, 2835, 0, 0)
    (folder / "over.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 54 + row * 30000, 0, 0, 54) + info)
    out["over.gif"], out["over.bmp"] = (folder / "over.gif", 422), (folder / "over.bmp", 422)
    return out


def warm_up(port):
    """Small images of each format, two at once, decoded first: each decoder's library loads once (a few MB of
    code) and each worker thread gets its heap, so what stays resident after the bombs is compared with a service
    that has done both."""
    import io

    from PIL import Image

    from .serve_check import at_once

    for fmt, mode in [("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("TIFF", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB")]:
        buf = io.BytesIO()
        Image.new(mode, (640, 480)).save(buf, format=fmt)
        at_once(port, buf.getvalue(), 4)


def memory_mb(pid, key):
    """VmRSS (resident now) or VmHWM (the peak) of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def issue_bombs(folder):
    """The images the issue measured: 10000x12000 of zeros in RGBA, 16-bit grey, RGB and grey + alpha PNG, a
    palette PNG with transparency, and an RGB JPEG."""
    from PIL import Image

    w, h = 10000, 12000
    made = [("rgba.png", Image.new("RGBA", (w, h)), {}), ("grey16.png", Image.new("I;16", (w, h)), {}),
            ("rgb.png", Image.new("RGB", (w, h)), {}), ("la.png", Image.new("LA", (w, h)), {}),
            ("p.png", Image.new("P", (w, h)), {"transparency": 0}), ("rgb.jpg", Image.new("RGB", (w, h)), {"quality": 50})]
    for name, img, kw in made:
        img.save(folder / name, **kw)
    return [folder / name for name, _, _ in made]


# the child's own peak: VmHWM starts afresh at exec, where ru_maxrss keeps the parent's (which made the images)
PREDICT = ("import sys\nfrom edge_runtime import Classifier\nc = Classifier(sys.argv[1], threads=1)\ntry:\n"
           "    r = c.predict(sys.argv[2], top_k=1)[0][0]\nexcept Exception as e:\n    r = type(e).__name__\n"
           "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
           "print(peak // 1024, r)")


def predict_peaks(model, code):
    """Each issue bomb through Classifier.predict in a fresh process running `code`'s edge_runtime."""
    import subprocess

    with tempfile.TemporaryDirectory() as work:
        print(f"edge_runtime from {Path(code).resolve()}\n\n| image | file | peak | answer |\n|---|---:|---:|---|")
        for path in issue_bombs(Path(work)):
            proc = subprocess.run([sys.executable, "-c", PREDICT, str(model), str(path)], cwd=code, capture_output=True,
                                  text=True, env={"PYTHONPATH": str(Path(code).resolve()), "PATH": "/usr/bin:/bin"})
            peak, _, answer = (proc.stdout.strip() or "? no output").partition(" ")
            print(f"| {path.name} | {path.stat().st_size:,} B | {peak} MB | {answer or proc.stderr[-100:]} |", flush=True)


def main(argv=None):
    from .serve_check import ServiceProcess, at_once

    p = argparse.ArgumentParser(prog="python -m checks.bomb_check", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a .tflite or .onnx file (labels.txt beside it)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--predict", action="store_true", help="the issue's bombs through predict, one process each")
    p.add_argument("--code", default=".", help="with --predict: the checkout whose edge_runtime runs")
    a = p.parse_args(argv)
    model = Path(a.model).resolve()
    if not model.is_file():
        print(f"error: {a.model}: no such model file", file=sys.stderr)
        return 2
    if a.predict:
        predict_peaks(model, a.code)
        return 0
    with tempfile.TemporaryDirectory() as work:
        bombs = make_bombs(Path(work))
        svc = ServiceProcess(model.parent, "--model", str(model), "--workers", str(a.workers), "--max-bytes", "20000000")
        try:
            warm_up(svc.port)
            print(f"CPU flags: {' '.join(cpu_flags())}; {a.workers} workers; start (each decoder loaded once): resident "
                  f"{memory_mb(svc.proc.pid, 'VmRSS'):.0f} MB\n")
            print("| image (two at once) | file | answers | service peak so far | resident after |")
            print("|---|---:|---|---:|---:|")
            for name, (path, _) in bombs.items():
                statuses = at_once(svc.port, path.read_bytes(), 2)
                print(f"| {name} | {path.stat().st_size:,} B | {statuses} | {memory_mb(svc.proc.pid, 'VmHWM'):.0f} MB "
                      f"| {memory_mb(svc.proc.pid, 'VmRSS'):.0f} MB |", flush=True)
        finally:
            svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
