"""bench/make_chain.py builds the benchmark chain the shell script it replaces built.

The reference (tests/data/make_chain-256M.json) was recorded from the original
``make_chain.sh 256M``: per layer, a fingerprint of ``qemu-img map`` (allocation,
depth, zero flags) and of the guest view.  The builder must reproduce both, and the
chain must be what the script promised: qcow2 v3, 64 KiB clusters, relative
backing names, clean for ``qemu-img check``, usable after a copy.
"""
import hashlib
import json
import os
import shutil

import pytest

from bench.make_chain import LAYERS, build_chain, layer_writes, parse_size
from conftest import DATA, run

REFERENCE = os.path.join(DATA, "make_chain-256M.json")


def map_fingerprint(directory, layer):
    out = run("qemu-img", "map", "--output=json", layer + ".qcow2", cwd=directory).stdout
    rows = [[e["start"], e["length"], e["depth"], e["zero"], e["data"]] for e in json.loads(out)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def guest_fingerprint(directory, layer, scratch):
    raw = os.path.join(scratch, layer + ".raw")
    run("qemu-img", "convert", "-O", "raw", layer + ".qcow2", raw, cwd=directory)
    digest = hashlib.sha256()
    with open(raw, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    os.unlink(raw)
    return digest.hexdigest()


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_matches_the_recorded_chain(bench_chain_256m, layer, tmp_path):
    with open(REFERENCE, encoding="utf-8") as handle:
        recorded = json.load(handle)["layers"][layer]
    assert map_fingerprint(bench_chain_256m, layer) == recorded["map"]
    assert guest_fingerprint(bench_chain_256m, layer, str(tmp_path)) == recorded["guest"]


def test_layers_are_qcow2_v3_with_relative_backing_names_and_check_clean(bench_chain_256m):
    below = None
    for layer in LAYERS:
        path = os.path.join(bench_chain_256m, layer + ".qcow2")
        info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
        assert (info["cluster-size"], info["format-specific"]["data"]["compat"]) == (65536, "1.1")
        assert info["virtual-size"] == 256 << 20
        assert info.get("backing-filename") == (below + ".qcow2" if below else None)
        run("qemu-img", "check", "-q", path)
        below = layer


def test_a_copy_of_the_directory_keeps_its_chain(bench_chain_256m, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(bench_chain_256m, copy)
    run("qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0xa1 64K 448K", "-c", "read -P 0xd4 3407872 196608",
        os.path.join(copy, "D.qcow2"))
    assert map_fingerprint(copy, "D") == map_fingerprint(bench_chain_256m, "D")


def test_sizes_and_layout_are_pure_functions_of_the_size():
    assert parse_size("256M") == 256 << 20 and parse_size("2G") == 2 << 30 and parse_size("2GB") == 2 << 30
    assert layer_writes("A", 128 << 20)[:2] == ["write -P 0xa1 0 1048576", "write -P 0xa1 2097152 1048576"]
    assert layer_writes("D", 64 << 20)[-1] == "write -z 41943040 1048576"
    with pytest.raises(ValueError):
        parse_size("１G")


def test_a_size_that_is_not_a_multiple_of_64m_is_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of 64M"):
        build_chain("96M", str(tmp_path))
    assert os.listdir(str(tmp_path)) == []
