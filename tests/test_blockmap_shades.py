"""``info blockmap`` on the demo tells more data from less: every layer of the demo holds
a different share of each cell, and each share gets its own shade (through the CLI)."""
import subprocess
import sys

from tests.conftest import ROOT


def blockmap_lines(directory, *commands):
    argv = [sys.executable, "-m", "monitor", "--demo", str(directory)]
    for command in commands:
        argv += ["-c", command]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def strips(lines):
    return {line.split("|")[0].strip(): line.split("|")[1] for line in lines if line.count("|") == 2}


def test_demo_layers_get_their_own_shades(tmp_path):
    lines = blockmap_lines(tmp_path / "demo", "info blockmap virtio0")
    assert "virtio0: [A] <- [B] <- [C] <- [D]" in lines
    # A: 1 MiB of every 4 MiB cell; B: 512 KiB of every other; C: 256 KiB of every fourth;
    # D: 64 KiB of every eighth (monitor/demo.py's stripes).
    assert strips(lines) == {"A": "▆" * 64, "B": "▅." * 32, "C": "▄..." * 16, "D": "▂......." * 8}
    assert lines[-2:] == [
        "  legend: the share of each cell an image holds, what a stream copies from it:",
        "    '█' all  '▇' 1/2+  '▆' 1/4+  '▅' 1/8+  '▄' 1/16+  '▃' 1/32+  '▂' 1/64+  '▁' less  "
        "'0' zero clusters only  '.' none (read from below)"]


def test_after_a_full_stream_the_top_holds_everything(tmp_path):
    lines = blockmap_lines(tmp_path / "demo", "block_stream virtio0", "block_job_wait virtio0",
                           "info blockmap virtio0")
    assert "virtio0: [D]" in lines
    # A's quarter of every cell, plus B's, C's and D's stripes where they fall: a quarter
    # or more everywhere, never a full cell.
    assert set(strips(lines)["D"]) == {"▆"}
