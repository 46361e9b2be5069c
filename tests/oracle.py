"""Small wrappers around the qemu-utils oracle and file fingerprints, shared by tests."""
import hashlib
import json
import subprocess


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprints(paths):
    return {path: sha256_file(path) for path in paths}


def qemu_img(*args, check=False):
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=check)


def check_clean(path, leaks_ok=False):
    """qemu-img check: (ok, output).  Leaked clusters (exit 3) count as clean only
    with ``leaks_ok``: after a kill they are acceptable, after normal operation not."""
    result = qemu_img("check", "-f", "qcow2", path)
    allowed = (0, 3) if leaks_ok else (0,)
    return result.returncode in allowed and "ERROR" not in result.stdout, result.stdout + result.stderr


def identical(path_a, path_b, fmt_a="qcow2", fmt_b="qcow2", force_share=False):
    """qemu-img compare; ``force_share`` (-U) reads images a live device holds locked."""
    share = ["-U"] if force_share else []
    result = qemu_img("compare", *share, "-f", fmt_a, "-F", fmt_b, path_a, path_b)
    return result.returncode == 0, result.stdout + result.stderr


def info(path):
    return json.loads(qemu_img("info", "--output=json", path, check=True).stdout)


def map_json(path):
    return json.loads(qemu_img("map", "--output=json", path, check=True).stdout)
