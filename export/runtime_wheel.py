"""edge_runtime as a wheel of its own, `edgeclf-runtime`, the form the device installs it in.

Written directly from the installed package's files (a wheel is a zip with three metadata files), so
it builds the same from a checkout or an installed copy, needs no build backend, and is reproducible:
fixed timestamps and file order give the same bytes for the same sources.
"""
import base64
import hashlib
import importlib.resources
import io
import zipfile
from pathlib import Path

NAME = "edgeclf-runtime"
SUMMARY = "Classify images on a device with a model exported by edgeclf (no TensorFlow)"
REQUIRES_PYTHON = ">=3.11"
REQUIRES = ["numpy>=1.23.2", "Pillow>=10.0"]
# what each kind of model file, and the service, needs beyond that
EXTRAS = {
    "tflite": ["ai-edge-litert>=1.2"],
    "onnx": ["onnxruntime>=1.17"],
    "serve": ["starlette>=0.37", "uvicorn>=0.29", "prometheus-client>=0.20", "python-multipart>=0.0.9"],
}
EXTRA_OF_FORMAT = {"tflite": "tflite", "onnx": "onnx"}
CONSOLE = "edgeclf-runtime = edge_runtime.cli:main"
_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold: no build time in the bytes


def version():
    import edge_runtime

    return edge_runtime.__version__


def _sources():
    """(name inside the wheel, bytes) of every module of the package, in name order."""
    root = importlib.resources.files("edge_runtime")
    return [(f"edge_runtime/{p.name}", p.read_bytes()) for p in sorted(root.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".py")]


def metadata():
    lines = ["Metadata-Version: 2.1", f"Name: {NAME}", f"Version: {version()}", f"Summary: {SUMMARY}",
             f"Requires-Python: {REQUIRES_PYTHON}"]
    lines += [f"Requires-Dist: {r}" for r in REQUIRES]
    for extra, reqs in EXTRAS.items():
        lines += [f"Provides-Extra: {extra}"] + [f'Requires-Dist: {r}; extra == "{extra}"' for r in reqs]
    return "\n".join(lines) + "\n"


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build(out_dir):
    """Write dist-style `edgeclf_runtime-<version>-py3-none-any.whl` into out_dir; returns its path."""
    dist = f"{NAME.replace('-', '_')}-{version()}"
    info = f"{dist}.dist-info"
    files = _sources() + [
        (f"{info}/METADATA", metadata().encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: edgeclf\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt", f"[console_scripts]\n{CONSOLE}\n".encode()),
        (f"{info}/top_level.txt", b"edge_runtime\n"),
    ]
    record = "\n".join([_record_line(n, d) for n, d in files] + [f"{info}/RECORD,,"]) + "\n"
    files.append((f"{info}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            zi = zipfile.ZipInfo(name, _DATE)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    out = Path(out_dir) / f"{dist}-py3-none-any.whl"
    from edge_runtime.files import write_bytes

    write_bytes(out, buf.getvalue())
    return out
