"""The backup benchmark keeps working: a small run prints its table, the report's
medians, ratios and verdicts are right on fixed samples, and the guest writes are
64 MiB of distinct, aligned, scattered 64 KiB writes.  Nothing asserts a time."""
import io
import shutil
import subprocess
import sys

from bench.backup_bench import WRITE_SIZE, WRITES, report, scattered_offsets
from tests.conftest import ROOT, require_qemu


def test_scattered_writes_are_distinct_aligned_and_spread():
    size = 2 << 30
    offsets = scattered_offsets(size)
    assert len(set(offsets)) == WRITES and WRITES * WRITE_SIZE == 64 << 20
    assert all(o % WRITE_SIZE == 0 and 0 <= o <= size - WRITE_SIZE for o in offsets)
    assert offsets[0] < size // 8 and offsets[-1] > size - size // 8


def test_report_rows_on_fixed_samples():
    samples = {"blockmon_full.completed": [0.8, 0.7, 0.9], "blockmon_full.bytes": [2 << 30] * 3,
               "qemu_full.completed": [1.3] * 3, "qemu_full.durable": [1.4] * 3,
               "blockmon_inc.completed": [0.2] * 3, "blockmon_inc.bytes": [64 << 20] * 3,
               "qemu_inc.completed": [0.1] * 3, "qemu_inc.durable": [0.25] * 3,
               "blockmon_incbig.completed": [0.3] * 3, "blockmon_incbig.bytes": [64 << 20] * 3}
    out = io.StringIO()
    report(samples, "2G", out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("backup benchmark: 2G chain, 3 runs, medians")
    rows = {line[:58].strip(): line[58:].split() for line in lines[2:7]}
    assert rows["drive-backup full: blockmon / QEMU event+flush"] == [
        "0.800s", "1.400s", "0.57x", "1.0x", "met"]
    assert rows["incremental, 1 TiB virtual / 2G virtual, same writes"] == [
        "0.300s", "0.200s", "1.50x", "1.3x", "MISSED"]
    assert "bytes copied, incremental: 64.0 MiB" in lines


def test_small_run_prints_the_table(tmp_path):
    require_qemu()
    result = subprocess.run([sys.executable, "-m", "bench.backup_bench", "--size", "256M",
                             "--runs", "1", "--no-scale", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bytes copied, full: 256.0 MiB" in result.stdout
    assert "bytes copied, incremental: 64.0 MiB" in result.stdout
    with_qemu = shutil.which("qemu-system-x86_64") is not None
    assert ("drive-backup full: blockmon / QEMU event+flush" in result.stdout) == with_qemu
