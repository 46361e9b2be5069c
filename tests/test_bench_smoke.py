"""The benchmark keeps working: CI's small variant runs end to end and prints its table.

Nothing here asserts a time.  QEMU rows appear only where qemu-system-x86_64 is
installed (CI does not install it); the report's shape is checked on fixed samples.
"""
import io
import shutil
import subprocess
import sys

from bench.run_bench import report
from tests.conftest import ROOT, require_qemu

ALWAYS = ("comparison", "full stream, blockmon durable / qemu-img rebase",
          "full stream, blockmon durable / plain copy bound",
          "1 TiB virtual / 256M virtual, same data", "bytes moved by a full stream:",
          "peak RSS (worst run):", "guest 4 KiB writes", "start-up, blockmon -c quit:",
          "spread over runs (s):")
QEMU_ROWS = ("full stream, blockmon durable / QEMU event+flush",
             "full stream, blockmon durable / QEMU bare event",
             "stream base B, blockmon / QEMU event+flush")


def test_small_variant_completes_and_prints_the_table(tmp_path):
    require_qemu()
    result = subprocess.run([sys.executable, "-m", "bench.run_bench", "--size", "256M", "--runs", "1",
                             "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ALWAYS:
        assert text in result.stdout, (text, result.stdout)
    with_qemu = shutil.which("qemu-system-x86_64") is not None
    for text in QEMU_ROWS:
        assert (text in result.stdout) == with_qemu, (text, result.stdout)
    assert ("QEMU rows left out" in result.stdout) != with_qemu


def sample_values(with_qemu):
    samples = {"blockmon_full.event": [1.0, 0.8, 0.9], "blockmon_full.rss": [30 << 20] * 3,
               "rebase.time": [1.2] * 3, "copy.time": [2.0] * 3, "copy.bytes": [200] * 3,
               "blockmon_base.event": [0.2] * 3, "blockmon_base.rss": [29 << 20] * 3,
               "blockmon_big.event": [1.0] * 3, "blockmon_big.rss": [31 << 20] * 3,
               "startup.time": [0.15] * 3,
               "latency.idle_p50": [1e-4] * 3, "latency.idle_p99": [2e-4] * 3,
               "latency.stream_p50": [1e-3] * 3, "latency.stream_p99": [5e-3, 8e-3, 6e-3],
               "latency.stream_writes": [100] * 3}
    if with_qemu:
        samples.update({"qemu_full.event": [0.6] * 3, "qemu_full.durable": [1.2] * 3,
                        "qemu_base.event": [0.1] * 3, "qemu_base.durable": [0.4] * 3})
    return samples


def test_report_shows_medians_ratios_and_verdicts():
    out = io.StringIO()
    report(sample_values(True), 100, True, "256M", out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("blockmon stream benchmark: 256M chain, 3 runs, medians")
    rows = {line[:52].strip(): line[52:].split() for line in lines[2:9]}
    assert rows["full stream, blockmon durable / QEMU event+flush"] == \
        ["0.900s", "1.200s", "0.75x", "1.0x", "met"]
    assert rows["full stream, blockmon durable / QEMU bare event"] == ["0.900s", "0.600s", "1.50x", "-"]
    assert rows["full stream, blockmon durable / plain copy bound"] == ["0.900s", "1.000s", "0.90x", "-"]
    assert rows["1 TiB virtual / 256M virtual, same data"] == ["1.000s", "0.900s", "1.11x", "1.3x", "met"]
    assert "worst run p99 8.00 ms" in out.getvalue()


def test_report_without_qemu_says_so():
    out = io.StringIO()
    report(sample_values(False), 100, False, "256M", out=out)
    text = out.getvalue()
    assert "QEMU" not in text.split("QEMU rows left out")[0].split("comparison")[1]
    assert "QEMU rows left out: qemu-system-x86_64 is not installed" in text
