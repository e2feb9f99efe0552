"""Which arithmetic training runs in: float32, mixed_float16 (GPUs with tensor cores) or mixed_bfloat16
(CPUs with AMX or AVX-512 BF16, through oneDNN). Variables, the softmax and the saved model stay float32.

`auto` picks mixed_bfloat16 on a CPU that has bfloat16 instructions, mixed_float16 on a GPU that runs float16
fast (compute capability 7.0 or newer), and float32 otherwise. docs/training.md has what each costs and gains.
"""
from edge_runtime.errors import InputError

CHOICES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve(choice, cpu_flags, gpu_capabilities=()):
    """(policy, why) for a --precision choice on a machine with these CPU flags and GPU compute capabilities
    ((major, minor) each; empty without a GPU)."""
    if choice not in CHOICES:
        raise InputError(f"--precision must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice, "asked for"
    if gpu_capabilities:
        if all(tuple(c) >= (7, 0) for c in gpu_capabilities):
            capability = ".".join(map(str, gpu_capabilities[0]))
            return "mixed_float16", (f"auto: GPU compute capability {capability} runs float16 fast")
        return "float32", "auto: this GPU has no fast float16 (compute capability below 7.0)"
    have = [f for f in BF16_FLAGS if f in cpu_flags]
    if have:
        return "mixed_bfloat16", f"auto: this CPU has {' and '.join(have)}"
    return "float32", "auto: no GPU, and this CPU has no bfloat16 instructions (amx_bf16, avx512_bf16)"


def machine_capabilities():
    """(CPU flags, GPU compute capabilities) of this machine, for resolve()."""
    from edge_runtime.machine import cpu_flags

    from runlib.tf_setup import import_tensorflow

    tf = import_tensorflow()
    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        caps.append(tuple(details.get("compute_capability", (0, 0))))
    return cpu_flags(), caps
