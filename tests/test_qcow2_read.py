"""qemu-img to us: images made by qemu-img and qemu-io read byte for byte like
``qemu-img convert -O raw``, and our block status agrees with ``qemu-img map``."""
import json
import os

import pytest

from conftest import run
from images.driver import DATA, UNALLOCATED, ZERO
from images.qcow2 import Qcow2Image

K, M = 1024, 1024 * 1024


def qemu_io(path, *commands, fmt="qcow2"):
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    result = run(*argv, path)
    assert "error" not in result.stdout.lower() + result.stderr.lower(), result
    return result


def raw_of(path, tmp_path):
    out = str(tmp_path / (os.path.basename(path) + ".raw"))
    run("qemu-img", "convert", "-O", "raw", path, out)
    with open(out, "rb") as f:
        return f.read()


def open_chain(paths):
    """Open base..top by hand (the chain opener lives elsewhere)."""
    below = None
    for path in paths:
        image = Qcow2Image.open(path, read_only=True)
        image.backing = below
        below = image
    return below


def make_varied(path, compat, cluster, size):
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
        "compat=%s,cluster_size=%d" % (compat, cluster), path, str(size))
    c = cluster
    qemu_io(path, "write -P 0x11 0 %d" % (3 * c),
            "write -P 0x22 %d 5000" % (c + 100),
            "write -P 0x33 %d %d" % (5 * c + 7, 2 * c + 11),
            "write -z %d %d" % (c, c),
            "write -z %d 1000" % (6 * c + 3),
            "write -P 0x44 %d %d" % (size - c - 512, c + 512),
            "discard %d %d" % (5 * c, c),
            "write -P 0x55 %d %d" % (size // 2 + 333, 3 * c))


CASES = [(compat, cluster) for compat in ("0.10", "1.1") for cluster in (4 * K, 64 * K, 2 * M)]


@pytest.mark.parametrize("compat,cluster", CASES)
def test_qemu_images_read_like_convert(qemu_img, tmp_path, compat, cluster):
    size = max(8 * M, 8 * cluster)
    path = str(tmp_path / "img.qcow2")
    make_varied(path, compat, cluster, size)
    image = Qcow2Image.open(path, read_only=True)
    assert image.cluster_size == cluster and image.virtual_size == size
    assert image.info()["format-specific"]["compat"] == compat
    assert image.read(0, size) == raw_of(path, tmp_path)
    assert image.read(cluster + 50, 7000) == raw_of(path, tmp_path)[cluster + 50:cluster + 7050]


@pytest.mark.parametrize("cluster", [4 * K, 64 * K])
def test_compressed_images(qemu_img, tmp_path, cluster):
    src, dst = str(tmp_path / "src.qcow2"), str(tmp_path / "c.qcow2")
    make_varied(src, "1.1", cluster, 4 * M)
    qemu_io(src, "write -P 0x66 %d %d" % (M, 512 * K))
    run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=%d" % cluster, src, dst)
    image = Qcow2Image.open(dst, read_only=True)
    runs = image.block_status(0, 4 * M)
    assert any(r.kind == DATA and r.host_offset is None for r in runs)
    assert image.read(0, 4 * M) == raw_of(src, tmp_path)


def test_chain_with_shorter_backing(qemu_img, tmp_path):
    base, mid, top = (str(tmp_path / n) for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "3M")
    qemu_io(base, "write -P 0xa1 0 3M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid, "6M")
    qemu_io(mid, "write -P 0xb2 %d 4096" % (M + 300), "write -z %d 64k" % (2 * M),
            "write -P 0xb3 %d 100" % (3 * M - 50))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096",
        "-b", "mid.qcow2", "-F", "qcow2", top, "8M")
    qemu_io(top, "write -P 0xc3 %d 9999" % (M - 5), "write -z %d 4096" % (M + 4096))
    image = open_chain([base, mid, top])
    assert image.backing_name == "mid.qcow2" and image.backing_format == "qcow2"
    assert image.read(0, 8 * M) == raw_of(top, tmp_path)
    assert image.read(3 * M - 100, 200) == raw_of(top, tmp_path)[3 * M - 100:3 * M + 100]


def test_block_status_matches_qemu_img_map(qemu_img, tmp_path):
    path = str(tmp_path / "img.qcow2")
    make_varied(path, "1.1", 64 * K, 8 * M)
    image = Qcow2Image.open(path, read_only=True)
    ours = image.block_status(0, 8 * M)
    assert sum(r.length for r in ours) == 8 * M and ours[0].offset == 0
    out = run("qemu-img", "map", "--output=json", path).stdout
    for entry in json.loads(out):
        for pos in range(entry["start"], entry["start"] + entry["length"], 4096):
            run_here = next(r for r in ours if r.offset <= pos < r.end)
            if entry["data"]:
                assert run_here.kind == DATA
                assert run_here.host_offset + pos - run_here.offset == \
                    entry["offset"] + pos - entry["start"]
            elif entry["present"]:
                assert run_here.kind == ZERO
            else:
                assert run_here.kind == UNALLOCATED
    kinds = [r.kind for r in ours]
    assert all(a != b or a == DATA for a, b in zip(kinds, kinds[1:]))
