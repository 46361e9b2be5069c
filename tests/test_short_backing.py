"""A backing image shorter than the image above it reads as zeros past its end, and a stream
over it completes with the guest's view unchanged (run through the CLI, judged by qemu-img)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run
from tests.oracle import check_clean, info


def blockmon(*argv):
    return subprocess.run([sys.executable, "-m", "monitor", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def guest_view(top, directory):
    path = str(directory / "view.raw")
    run("qemu-img", "convert", "-O", "raw", top, path)
    return path


def test_stream_over_a_shorter_raw_backing_completes(tmp_path, qemu_img):
    base, top = str(tmp_path / "base.raw"), str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "raw", base, "1M")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x61 0 1M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top, "4M")
    view = guest_view(top, tmp_path)
    reads = blockmon(top, "-c", 'qemu-io virtio0 "read -P 0 1M 3M"', "-c", "block_stream virtio0")
    assert reads.returncode == 0, reads.stdout + reads.stderr
    assert reads.stdout.startswith("read 3145728/3145728 bytes at offset 1048576\n")
    assert '"offset": 4194304, "speed": 0}' in reads.stdout and '"error"' not in reads.stdout
    assert "backing-filename" not in info(top)
    assert check_clean(top)[0]
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", view, top)


@pytest.mark.parametrize("base_option", ["", "base.raw"])
def test_stream_past_the_end_of_a_shorter_intermediate_image(tmp_path, qemu_img, base_option):
    # top (4M) <- mid (1M) <- base (4M of 0x62): the guest sees zeros past 1 MiB.
    base, mid, top = (str(tmp_path / name) for name in ("base.raw", "mid.qcow2", "top.qcow2"))
    run("qemu-img", "create", "-q", "-f", "raw", base, "4M")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x62 0 4M", base)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top, "4M")
    view = guest_view(top, tmp_path)
    result = blockmon(top, "-c", ("block_stream virtio0 0 " + base_option).strip())
    assert result.returncode == 0, result.stdout + result.stderr
    assert info(top).get("backing-filename") == (base_option or None)
    assert check_clean(top)[0]
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", view, top)
