"""python -m benchmark.pi_check --run runs/<name> --variant tflite-int8

The bundle, run where users deploy it: an emulated aarch64 Raspberry Pi OS-like Python.

1. `make bundle` builds dist/<run>-<variant>.tar.gz; it is unpacked as a device would.
2. An arm64 Debian bookworm userland (Python 3.11 and glibc 2.36, as Raspberry Pi OS bookworm) is
   unpacked once with mmdebstrap into .pi/ and run with qemu-aarch64-static (Cortex-A72, a Pi 4).
   No binfmt_misc is needed: the guest Python is started through qemu explicitly.
3. The bundle's own requirements.txt is installed for aarch64 by the host's pip with explicit
   platform tags (the guest cannot start pip's subprocesses without binfmt_misc).
4. The guest classifies a few of the run's test images (the same uint8 pixels the host decodes, so
   only the model and runtime are compared) and the host runs the same bundle on the same pixels.

Pass: the guest reports aarch64, predicts the same class as the host on every image, and its
probabilities are within TOLERANCE. Exit 0 pass, 1 mismatch, 2 bad input, 3 this machine cannot
run the check (not root, no apt-get, no network to the Debian mirror): one `unavailable:` line.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError, exit_code
from edge_runtime.files import write_json

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".pi"
SUITE = "bookworm"  # Raspberry Pi OS 12 is built on it: Python 3.11.2, glibc 2.36
GLIBC_MINOR = 36
QEMU_CPU = "cortex-a72"  # Raspberry Pi 4 (cortex-a76 for a Pi 5)
# Float kernels sum in another order on NEON than on AVX: a few float32 ulps. Integer kernels may
# round a requantization the other way: one step of the output's scale (1/256 for a uint8 softmax).
FLOAT_TOLERANCE = 1e-4
# XNNPACK's integer kernels requantize the same way on ARM and x86 (measured: identical outputs), so TFLite
# integer files get one output step. ONNX Runtime's ARM and x86 int8 kernels round requantization differently,
# and a one-step difference inside the network can grow on its way out (measured on the Leeds MobileNet:
# 2 steps on 1 of 8 images, top-1 identical), so ONNX integer files get a few.
OUTPUT_STEPS = {"tflite": 1, "onnx": 4}
# qemu passes the host's /proc/cpuinfo through unless the guest root has one; ONNX Runtime's CPU probe
# segfaults on an x86 one. This is a Raspberry Pi 4's.
CPUINFO = "".join(f"""processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

""" for i in range(4)) + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.5\n"

GUEST = r'''
import json, platform, sys
import numpy as np
from importlib import metadata
from edge_runtime import Classifier
model, pixels, out = sys.argv[1:4]
clf = Classifier(model)  # verifies the checksum against the bundle's manifest
probs = clf.probabilities(np.load(pixels))
versions = {}
for name in ("numpy", "Pillow", "ai-edge-litert", "onnxruntime"):
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
json.dump({"machine": platform.machine(), "python": platform.python_version(), "libc": " ".join(platform.libc_ver()),
           "versions": versions, "probabilities": probs.tolist(),
           "output_scale": clf.output.scale if clf.output.quantized else None}, open(out, "w"))
'''


class Unavailable(Exception):
    """This machine cannot run the emulated check; the message says why."""


def log(msg):
    print(f"[pi-check] {msg}", flush=True)


def _run(cmd, what, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise Unavailable(f"{what} failed: {tail[0][:300]}")
    return proc


def ensure_tools():
    """qemu-aarch64-static and mmdebstrap, installed from Debian's packages when missing (root only)."""
    if shutil.which("qemu-aarch64-static") and shutil.which("mmdebstrap"):
        return
    if not shutil.which("apt-get"):
        raise Unavailable("qemu-aarch64-static and mmdebstrap are missing and there is no apt-get to install them")
    if os.geteuid() != 0:
        raise Unavailable("qemu-aarch64-static and mmdebstrap are missing; installing them needs root "
                          "(sudo apt-get install qemu-user-static mmdebstrap)")
    log("installing qemu-user-static and mmdebstrap from Debian's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-user-static", "mmdebstrap"],
         "apt-get install qemu-user-static mmdebstrap", env=env)


def ensure_rootfs():
    """The arm64 userland under .pi/, unpacked once (nothing runs under emulation to build it)."""
    root = CACHE / f"{SUITE}-arm64"
    if (root / "usr" / "bin" / "python3.11").is_file():
        return root
    if os.geteuid() != 0:
        raise Unavailable("unpacking the arm64 userland with mmdebstrap --mode=root needs root")
    log(f"unpacking an arm64 Debian {SUITE} userland (Python 3.11) into {root}")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SUITE}-arm64-", dir=CACHE))
    try:
        _run(["mmdebstrap", "--variant=extract", "--arch=arm64", "--mode=root", "--quiet",
              "--include=python3.11,libstdc++6,coreutils", SUITE, str(tmp)], "mmdebstrap")
        (tmp / "proc").mkdir(exist_ok=True)
        (tmp / "proc" / "cpuinfo").write_text(CPUINFO)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_packages(requirements):
    """The bundle's requirements for aarch64 CPython 3.11, installed by the host's pip into .pi/site-<hash>."""
    text = Path(requirements).read_text()
    site = CACHE / f"site-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if (site / ".complete").is_file():
        return site
    log(f"installing the bundle's requirements for aarch64 ({', '.join(text.split())})")
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, GLIBC_MINOR + 1)]
    tmp = Path(tempfile.mkdtemp(prefix=".site-", dir=CACHE))
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(tmp), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
               "--abi", "cp311", *[a for p in platforms for a in ("--platform", p)], "-r", str(requirements)]
        _run(cmd, "pip install of the bundle's aarch64 wheels")
        (tmp / ".complete").write_text(text)
        os.replace(tmp, site)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return site


def guest_python(root, site, bundle, args, timeout):
    env = {"PATH": "/usr/bin:/bin", "QEMU_LD_PREFIX": str(root), "QEMU_CPU": QEMU_CPU,
           "PYTHONPATH": f"{bundle}:{site}", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "HOME": str(bundle)}
    qemu = shutil.which("qemu-aarch64-static")
    return subprocess.run([qemu, str(root / "usr" / "bin" / "python3.11"), *args], cwd=bundle, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_pixels(run, count):
    """`count` test images, spread over the classes, as the uint8 pixels both sides get."""
    from .evaluate import test_set

    paths, labels, pixels = test_set(run)  # the benchmark's own checks: present, unchanged since training
    order = sorted(range(len(paths)), key=lambda i: (labels[i], str(paths[i])))
    picked = order[:: max(1, len(order) // count)][:count]
    root = run.data_root()
    return [str(paths[i].relative_to(root)) for i in picked], pixels[picked]


def check(run, variant, count=8, dist=Path("dist"), timeout=3600):
    from edge_runtime.classifier import Classifier
    from export.bundle import build
    from export.variants import BY_NAME

    tarball = build(run, variant, dist)
    names, pixels = test_pixels(run, count)
    ensure_tools()
    root = ensure_rootfs()
    with tempfile.TemporaryDirectory(prefix="pi-check-") as work:
        work = Path(work)
        with tarfile.open(tarball) as tar:
            tar.extractall(work, filter="data")
        bundle = next(p for p in work.iterdir() if p.is_dir())
        site = ensure_packages(bundle / "requirements.txt")
        np.save(work / "pixels.npy", pixels)
        (work / "guest.py").write_text(GUEST)
        model = json.loads((bundle / "manifest.json").read_text())["variants"][variant]["file"]
        log(f"classifying {len(pixels)} test images under emulation (about 300x slower than a real Pi)")
        proc = guest_python(root, site, bundle, [str(work / "guest.py"), model, str(work / "pixels.npy"),
                                                 str(work / "guest.json")], timeout)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or "no output").splitlines()[-1]
            raise RuntimeError(f"the bundle failed on the emulated Pi: {tail[:300]}")
        guest = json.loads((work / "guest.json").read_text())
        host = Classifier(bundle / model).probabilities(pixels)  # the same bundle, on this machine
    mine = np.asarray(guest["probabilities"], np.float32)
    integer = BY_NAME[variant].calibrated  # integer arithmetic throughout
    steps = OUTPUT_STEPS[BY_NAME[variant].format]
    # one output step: the file's own uint8 scale (TFLite), or a uint8 step over the softmax's 0..1 (ONNX QDQ)
    step = guest["output_scale"] if guest["output_scale"] else 1 / 255
    tolerance = step * steps * 1.0001 if integer else FLOAT_TOLERANCE
    diff = np.abs(mine - host).max(axis=1)
    same = mine.argmax(1) == host.argmax(1)
    classes = run.class_names()
    rows = [{"image": n, "host": classes[h], "pi": classes[p], "max_abs_prob_diff": float(d)}
            for n, h, p, d in zip(names, host.argmax(1), mine.argmax(1), diff)]
    result = {"run": run.path.name, "variant": variant, "images": len(names), "guest": {
        k: guest[k] for k in ("machine", "python", "libc", "versions")}, "qemu_cpu": QEMU_CPU, "suite": SUITE,
        "tolerance": tolerance,
        "tolerance_kind": f"{steps} output quantization step(s)" if integer else "float32",
        "same_top1": int(same.sum()), "max_abs_prob_diff": float(diff.max()),
        "passed": bool(same.all() and diff.max() <= tolerance and guest["machine"] == "aarch64"), "rows": rows}
    return result


def table(result):
    lines = ["| image | host | Pi (emulated) | max abs Δp |", "|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['host']} | {r['pi']} | {r['max_abs_prob_diff']:.2e} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.pi_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run folder (default: the newest finished run in runs/)")
    p.add_argument("--variant", default="tflite-int8", help="exported variant to check (default tflite-int8)")
    p.add_argument("--images", type=int, default=8, help="test images to classify on the emulated Pi (default 8)")
    p.add_argument("--dist", default="dist", help="where the bundle is written (default dist/)")
    a = p.parse_args(argv)

    def body():
        from train.rundir import resolve_run

        if a.images < 1:
            raise InputError(f"--images must be at least 1, got {a.images}")
        run = resolve_run(a.run)
        try:
            result = check(run, a.variant, a.images, Path(a.dist))
        except Unavailable as e:
            print(f"unavailable: {e}", file=sys.stderr)
            return 3
        except RuntimeError as e:  # the bundle itself failed on the emulated Pi: a result, said in one line
            print(f"error: {e}", file=sys.stderr)
            return 1
        g = result["guest"]
        log(f"guest: {g['machine']}, Python {g['python']}, {g['libc']}, qemu -cpu {QEMU_CPU}; installed from the "
            f"bundle's requirements.txt: {', '.join(f'{k} {v}' for k, v in g['versions'].items())}")
        print(table(result), flush=True)
        out = run.path / "pi_check" / f"{a.variant}.json"
        write_json(out, result)
        verdict = (f"{result['same_top1']}/{result['images']} images with the host's top-1, max |Δp| "
                   f"{result['max_abs_prob_diff']:.2e} (tolerance {result['tolerance']:.2e}, {result['tolerance_kind']})")
        if not result["passed"]:
            print(f"error: the emulated Pi disagrees with this machine: {verdict}", file=sys.stderr)
            return 1
        log(f"passed: {verdict}; {out}")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
