"""What kind of CPU this is: the facts that decide which runtime settings and kernels are fastest."""
import platform

# Instruction-set features that decide integer (and float) kernel speed.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16", "asimd",
               "asimddp", "i8mm", "fphp")


def cpu_flags():
    """The speed-relevant CPU flags of this machine (x86 'flags' or ARM 'Features' in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((l for l in f if l.startswith(("flags", "Features"))), "")
    except OSError:
        return []
    have = set(line.split(":", 1)[-1].split())
    return [f for f in SPEED_FLAGS if f in have]


def signature():
    """Machines with the same signature pick the same fastest settings."""
    return {"arch": platform.machine(), "cpu_flags": cpu_flags()}


def describe():
    """This machine for a report: CPU model, architecture, cores, memory, OS, Python and the speed flags."""
    import os

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem = None
    return {"cpu": cpu, "machine": platform.machine(), "cores": cores(), "memory_gib": round(mem, 1) if mem else None,
            "os": platform.platform(), "python": platform.python_version(), "cpu_flags": cpu_flags()}


def cores():
    """The cores this process may run on (all of them unless restricted)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


RUNTIME_PACKAGES = ("edgeclf-runtime", "ai-edge-litert", "onnxruntime", "numpy", "Pillow")


def runtime_versions(names=RUNTIME_PACKAGES):
    """Installed versions of the packages that decide what the device computes (missing ones left out)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
