"""Where training runs: the tf.distribute strategy, the multi-worker roles, and the train log tagged by worker."""
import json
import os

import numpy as np

from edge_runtime.errors import InputError
from runlib.progress import NORMAL, logger

_log = logger("train")


def log(msg, level=NORMAL):
    """The train log; a non-chief worker's lines say which worker speaks."""
    (logger(f"train{_worker_tag()}") if _worker_tag() else _log)(msg, level)


def _worker_tag():
    return "" if is_chief() else f" worker {tf_config()['task'].get('index', 0)}"


def make_strategy(cfg):
    from runlib.tf_setup import import_tensorflow
    tf = import_tensorflow()

    if cfg["logical_cpus"] > 1:  # the GPU code path, exercised on one CPU split into N devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cfg["logical_cpus"])
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cfg["logical_cpus"])])
    choice = cfg["strategy"]
    if choice == "multiworker" or (choice == "auto" and os.environ.get("TF_CONFIG")):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if choice == "mirrored" or (choice == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def tf_config():
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise InputError(f"TF_CONFIG is not valid JSON ({e})") from None


def is_chief():
    conf = tf_config()
    task = conf.get("task", {})
    return task.get("type", "chief") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                                    and "chief" not in conf.get("cluster", {}))


def strategy_for(cfg):
    """The run's strategy, said in the log when it spreads over several devices or workers."""
    from runlib.tf_setup import import_tensorflow
    tf = import_tensorflow()

    strategy = make_strategy(cfg)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        log(f"MultiWorkerMirroredStrategy over {strategy.num_replicas_in_sync} replicas "
            f"({len(tf_config()['cluster'].get('worker', [])) + len(tf_config()['cluster'].get('chief', []))} workers)")
    elif strategy.num_replicas_in_sync > 1:
        log(f"{type(strategy).__name__} over {strategy.num_replicas_in_sync} devices")
    return strategy


def weights_fingerprint(model):
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]
