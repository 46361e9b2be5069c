"""--demo: the chain and second disk built with our images code, checked by qemu-img/qemu-io;
the walkthrough against the real core."""
import os
import subprocess
import sys

import pytest

from conftest import run
from monitor.demo import DemoError, LAYERS, build_demo, prepare_directory, walkthrough_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(str(tmp_path_factory.mktemp("demo") / "d"))


def test_demo_chain_is_valid_for_qemu_img_with_relative_backing_names(demo, qemu_img):
    for name in ("A", "B", "C", "D", "disk0"):
        run(qemu_img, "check", os.path.join(demo.directory, name + ".qcow2"))
    chain = run(qemu_img, "info", "--backing-chain", os.path.join(demo.directory, "D.qcow2")).stdout
    assert [line.split(" (")[0] for line in chain.splitlines() if line.startswith("backing file:")] == [
        "backing file: C.qcow2", "backing file: B.qcow2", "backing file: A.qcow2"]


def test_each_layer_shows_its_own_pattern_through_the_chain(demo, qemu_img):
    d = os.path.join(demo.directory, "D.qcow2")
    commands = []
    for _, _, byte, length, _, start in LAYERS:
        commands += ["-c", "read -P 0x%x %d %d" % (byte, start, length)]
    result = run("qemu-io", "-r", *commands, d)
    assert "Pattern verification failed" not in result.stdout
    assert result.stdout.count("read ") == 4


def test_summary_says_what_was_made_and_what_to_type(demo):
    made, hint = demo.summary()
    assert made == ("demo: virtio0 = [A] <- [B] <- [C] <- [D], ide0-hd0 = disk0 (256 MiB each) in %s"
                    % demo.directory)
    assert hint.startswith("try: info block, ") and "block_stream virtio0 6M A" in hint
    assert [(d.device, os.path.basename(d.path)) for d in demo.drives] == [
        ("virtio0", "D.qcow2"), ("ide0-hd0", "disk0.qcow2")]
    assert os.path.isdir(os.path.join(demo.directory, "new-path"))


def test_a_foreign_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep")
    with pytest.raises(DemoError) as err:
        prepare_directory(str(tmp_path))
    assert str(err.value) == "demo directory %s is not empty and holds no earlier demo" % tmp_path
    assert os.listdir(tmp_path) == ["precious.txt"]


def test_walkthrough_plays_the_seed_commands(demo):
    commands = [command for _, command in walkthrough_steps(demo)]
    assert "block_stream virtio0 6M A" in commands
    assert "snapshot_blkdev ide0-hd0 %s/new-path/disk.img qcow2" % demo.directory in commands
    assert commands.index("block_stream ide0-hd0") > commands.index(
        "snapshot_blkdev ide0-hd0 %s/new-path/disk.img qcow2" % demo.directory)


def test_walkthrough_end_to_end(tmp_path, qemu_img):
    directory = str(tmp_path / "walk")
    result = subprocess.run([sys.executable, "-m", "monitor", "--demo", directory, "--walkthrough"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "(qemu) block_stream virtio0 6M A" in out
    assert "BLOCK_JOB_COMPLETED" in out
    assert "Backing file:     A.qcow2" in out or "Backing file:     %s/A.qcow2" % directory in out
    assert out.count(": unchanged") == 2
    new_disk = os.path.join(directory, "new-path", "disk.img")
    info = run(qemu_img, "info", new_disk).stdout
    assert "backing file" not in info
    run(qemu_img, "compare", new_disk, os.path.join(directory, "disk0.qcow2"))
