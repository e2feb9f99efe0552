"""`edgeclf pi-check --run runs/<name> [--variant V]`

The bundle, run where users deploy it: an emulated aarch64 Raspberry Pi OS-like Python.

1. `make bundle` builds the run's bundle (the default candidates, or --variant); it is unpacked as a
   device would.
2. An arm64 Debian bookworm userland (Python 3.11 and glibc 2.36, as Raspberry Pi OS bookworm) is
   unpacked once with mmdebstrap into the cache folder and run with qemu-aarch64-static (Cortex-A72, a
   Pi 4). No binfmt_misc is needed: the guest Python is started through qemu explicitly.
3. The bundle's own requirements.txt (edge_runtime's wheel and its pinned dependencies, the service's
   included) is installed for aarch64 by the host's pip with explicit platform tags (the guest cannot
   start pip's subprocesses without binfmt_misc). A requirement with no aarch64 wheel fails the check.
4. Inside the guest, in the unpacked bundle, as its README says: `selfcheck` (every file on the
   reference images against the host's recorded probabilities, under edge_runtime.selfcheck's
   tolerances), `select` (under emulation its timings only show that it works), then `serve`, asked
   for /health and one classification, which must equal the host's answer, and stopped with SIGTERM.

Exit 0 pass, 1 a failure (named), 2 bad input, 3 this machine cannot run the emulation at all (not
root, no apt-get, no Debian mirror): one `unavailable:` line.
"""
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import signal
import tarfile
import tempfile
import time
from pathlib import Path

from edge_runtime.files import write_json
from runlib.progress import logger

SUITE = "bookworm"  # Raspberry Pi OS 12 is built on it: Python 3.11.2, glibc 2.36
GLIBC_MINOR = 36
QEMU_CPU = "cortex-a72"  # Raspberry Pi 4 (cortex-a76 for a Pi 5)
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

PROBE = ("import json, platform; from importlib import metadata; print(json.dumps({'machine': platform.machine(), "
         "'python': platform.python_version(), 'libc': ' '.join(platform.libc_ver()), "
         "'versions': {d.metadata['Name']: d.version for d in metadata.distributions()}}))")


class Unavailable(Exception):
    """This machine cannot run the emulation at all; the message says why (exit 3)."""


class Failed(Exception):
    """The bundle does not install or run on the emulated Pi; the message says what (exit 1)."""


log = logger("pi-check")


def _run(cmd, what, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise Unavailable(f"{what} failed: {tail[0][:300]}")
    return proc


def default_cache():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeclf" / "pi"


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


def ensure_rootfs(cache):
    """The arm64 userland under the cache folder, unpacked once (nothing runs under emulation to build it)."""
    root = cache / f"{SUITE}-arm64"
    if (root / "usr" / "bin" / "python3.11").is_file():
        return root
    if os.geteuid() != 0:
        raise Unavailable("unpacking the arm64 userland with mmdebstrap --mode=root needs root")
    log(f"unpacking an arm64 Debian {SUITE} userland (Python 3.11) into {root}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SUITE}-arm64-", dir=cache))
    try:
        _run(["mmdebstrap", "--variant=extract", "--arch=arm64", "--mode=root", "--quiet",
              "--include=python3.11,libstdc++6,coreutils", SUITE, str(tmp)], "mmdebstrap")
        (tmp / "proc").mkdir(exist_ok=True)
        (tmp / "proc" / "cpuinfo").write_text(CPUINFO)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def unmet_requirement(pip_output):
    """The requirement pip could not find a wheel for, from its error output."""
    m = re.search(r"(?:No matching distribution found for|satisfies the requirement) (\S+)", pip_output)
    return m.group(1) if m else None


def ensure_packages(bundle, cache):
    """The bundle's requirements.txt for aarch64 CPython 3.11, installed by the host's pip into
    cache/site-<hash of the requirements and the wheels they name>."""
    requirements = bundle / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes())
    for wheel in sorted((bundle / "wheels").glob("*.whl")):
        digest.update(wheel.read_bytes())
    site = cache / f"site-{digest.hexdigest()[:12]}"
    if (site / ".complete").is_file():
        return site
    names = [l for l in requirements.read_text(encoding="utf-8").splitlines() if l.strip() and not l.startswith("#")]
    log(f"installing the bundle's requirements for aarch64 ({', '.join(names)})")
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, GLIBC_MINOR + 1)]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".site-", dir=cache))
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(tmp), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
               "--abi", "cp311", *[a for p in platforms for a in ("--platform", p)], "-r", "requirements.txt"]
        proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True)  # paths in it are the bundle's
        if proc.returncode != 0:
            missing = unmet_requirement(proc.stderr + proc.stdout)
            tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1][:300]
            raise Failed(f"requirement {missing} has no wheel for aarch64 CPython 3.11 (pip: {tail})" if missing
                         else f"the bundle's requirements do not install for aarch64 (pip: {tail})")
        (tmp / ".complete").write_text("\n".join(names))
        os.replace(tmp, site)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return site


class Guest:
    """The emulated Pi's Python, in the unpacked bundle, with the bundle's aarch64 packages and nothing else."""

    def __init__(self, root, site, bundle):
        self.root, self.bundle = root, bundle
        self.env = {"PATH": "/usr/bin:/bin", "QEMU_LD_PREFIX": str(root), "QEMU_CPU": QEMU_CPU, "PYTHONPATH": str(site),
                    "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(bundle)}
        self.argv = [shutil.which("qemu-aarch64-static"), str(root / "usr" / "bin" / "python3.11")]

    def run(self, args, timeout):
        return subprocess.run(self.argv + args, cwd=self.bundle, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def edge(self, args, timeout):
        """python -m edge_runtime ARGS in the guest; its exit code and output."""
        p = self.run(["-m", "edge_runtime", *args], timeout)
        return {"command": "python -m edge_runtime " + " ".join(args), "exit_code": p.returncode,
                "stdout": p.stdout, "stderr": p.stderr[-3000:]}

    def popen(self, args, output):
        return subprocess.Popen(self.argv + args, cwd=self.bundle, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                text=True)


def serve_smoke(guest, bundle, timeout):
    """`serve` in the guest, asked for /health and one classification (a reference image, compared with the
    host's answer from the same file under the self-check tolerance), then stopped with SIGTERM."""
    from edge_runtime.bundle import Bundle
    from edge_runtime.classifier import Classifier
    from edge_runtime.selfcheck import tolerance

    from .serve_check import free_port, request

    b = Bundle(bundle)
    image = (bundle / "reference" / b.reference()["images"][0]["file"]).read_bytes()
    port = free_port()
    with tempfile.TemporaryFile("w+") as output:
        proc = guest.popen(["-m", "edge_runtime", "serve", "--port", str(port), "--workers", "1"], output)
        answer, deadline = None, time.monotonic() + timeout
        try:
            while answer is None and proc.poll() is None and time.monotonic() < deadline:
                try:
                    if request(port, "GET", "/health")[0] == 200:
                        slow = http.client.HTTPConnection("127.0.0.1", port, timeout=600)  # emulated: minutes
                        try:
                            answer = request(port, "POST", "/v1/classify?top_k=3", image, "image/jpeg", slow)
                        finally:
                            slow.close()
                except OSError:
                    time.sleep(2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            output.seek(0)
            log_text = output.read()
    result = {"answer": answer, "exit_code": proc.returncode, "said_stopped": "stopped" in log_text,
              "log": log_text[-2000:]}
    if answer is None or answer[0] != 200:
        result["passed"] = False
        return result
    variant = answer[1]["variant"]
    clf = Classifier(b.model_path(variant), settings={}, threads=1)
    host = clf.predict(image, top_k=3)
    tol, _ = tolerance(b.entry(variant)["format"], b.kind(variant), clf.output.scale if clf.output.quantized else None)
    got = answer[1]["top_k"]
    result.update(variant=variant, host=[{"label": l, "probability": p} for l, p in host],
                  passed=[g["label"] for g in got] == [l for l, _ in host]
                  and all(abs(g["probability"] - p) <= tol for g, (_, p) in zip(got, host))
                  and proc.returncode == 0 and result["said_stopped"])
    return result


def check(run, variants=None, dist=Path("dist"), cache=None, timeout=3600):
    from export.bundle import build

    cache = Path(cache or default_cache()).resolve()  # the guest runs in the bundle folder
    with run.lock("pi-check"):
        return _check(run, variants, dist, cache, timeout, build)


def _check(run, variants, dist, cache, timeout, build):
    from runlib import scratch

    tarball = build(run, variants, dist)
    ensure_tools()
    root = ensure_rootfs(cache)
    with tempfile.TemporaryDirectory(prefix=scratch.prefix("pi-check")) as work:
        work = Path(work)
        with tarfile.open(tarball) as tar:
            tar.extractall(work, filter="data")
        bundle = next(p for p in work.iterdir() if p.is_dir())
        site = ensure_packages(bundle, cache)
        guest = Guest(root, site, bundle)
        probe = guest.run(["-c", PROBE], timeout)
        if probe.returncode != 0:
            raise Failed(f"the guest Python does not start: {(probe.stderr.strip() or 'no output').splitlines()[-1][:300]}")
        result = {"run": run.path.name, "bundle": bundle.name, "qemu_cpu": QEMU_CPU, "suite": SUITE,
                  "guest": json.loads(probe.stdout)}
        log(f"guest: {result['guest']['machine']}, Python {result['guest']['python']}, {result['guest']['libc']}, "
            f"qemu -cpu {QEMU_CPU}; selfcheck under emulation (about 300x slower than a real Pi)")
        result["selfcheck"] = guest.edge(["selfcheck", "--json", "selfcheck.json"], timeout)
        print(result["selfcheck"]["stdout"], end="", flush=True)
        if (bundle / "selfcheck.json").is_file():
            result["selfcheck"]["result"] = json.loads((bundle / "selfcheck.json").read_text(encoding="utf-8"))
        log("select under emulation (its timings only show that it works)")
        result["select"] = guest.edge(["select", "--max-seconds", "4", "--min-runs", "5"], timeout)
        print(result["select"]["stdout"], end="", flush=True)
        if (bundle / "selection.json").is_file():
            result["select"]["selection"] = json.loads((bundle / "selection.json").read_text(encoding="utf-8"))
        log("serve under emulation: /health, one classification, SIGTERM")
        result["serve"] = serve_smoke(guest, bundle, timeout)
    result["passed"] = bool(result["guest"]["machine"] == "aarch64" and result["selfcheck"]["exit_code"] == 0
                            and result["select"]["exit_code"] == 0 and result["serve"]["passed"])
    return result


def failures(result):
    """What failed, in words."""
    out = []
    if result["guest"]["machine"] != "aarch64":
        out.append(f"the guest reports {result['guest']['machine']}, not aarch64")
    for step in ("selfcheck", "select"):
        r = result[step]
        if r["exit_code"] != 0:
            lines = [l for l in (r["stdout"] + r["stderr"]).splitlines() if l.startswith(("FAIL", "error:"))]
            out.append(f"{step}: " + ("; ".join(lines)[:400] or f"exit code {r['exit_code']}"))
    s = result["serve"]
    if not s["passed"]:
        out.append(f"serve: answer {s.get('answer')}, host {s.get('host')}, exit code {s['exit_code']}")
    return out


def run_command(o):
    """`edgeclf pi-check`: options by name (runlib/options.py)."""
    from runlib.options import resolve
    from runlib.run_folder import resolve_run

    c = resolve("pi-check", o)
    run = resolve_run(c.run)
    try:
        result = check(run, c.variant, Path(c.dist), c.cache)
    except Unavailable as e:
        print(f"unavailable: {e}", file=sys.stderr)
        return 3
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    g = result["guest"]
    wanted = {"edgeclf-runtime", "ai-edge-litert", "onnxruntime", "numpy", "pillow", "uvicorn", "starlette"}
    log("installed from the bundle's requirements.txt: "
        + ", ".join(f"{k} {v}" for k, v in sorted(g["versions"].items()) if k.lower() in wanted))
    out = run.path / "pi_check" / f"{result['bundle']}.json"
    write_json(out, result)
    if not result["passed"]:
        print("error: on the emulated Pi: " + "; ".join(failures(result)), file=sys.stderr)
        return 1
    s = result["serve"]
    log(f"passed: selfcheck, select, and serve answered {s['answer'][1]['top_k'][0]['label']} like the host "
        f"({s['variant']}), then stopped on SIGTERM; {out}")
    return 0

