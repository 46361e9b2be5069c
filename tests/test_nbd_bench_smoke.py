"""The NBD benchmark's latency tool keeps working: its own NBD client writes through
blockmon's export while a stream runs, and the table printer names every row's target.
Nothing here asserts a time."""
import re
import subprocess
import sys

from bench.nbd_bench import ROWS, print_table
from conftest import ROOT, require_qemu
from nbd_helpers import build_chain


def test_nbd_latency_writes_through_the_export_while_a_stream_runs(tmp_path):
    require_qemu()
    chain = tmp_path / "chain"
    chain.mkdir()
    build_chain(str(chain))
    result = subprocess.run([sys.executable, "-m", "bench.nbd_latency", "--chain", str(chain)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    values = dict(item.split("=") for item in result.stdout.split())
    assert set(values) == {"idle_p50", "idle_p99", "stream_p50", "stream_p99", "stream_writes"}
    assert all(re.fullmatch(r"[0-9.]+ms", values[key]) for key in values if key != "stream_writes")
    # the chain itself was copied, never written
    assert "backing file: A.qcow2" in subprocess.run(
        ["qemu-img", "info", str(chain / "D.qcow2")], capture_output=True, text=True).stdout


def test_the_table_names_each_target_and_whether_it_is_met(capsys):
    qemu = {"seq_read_s": 1.0, "iops_4k": 1000.0, "read_1m_MBps": 100.0,
            "write_64k_MBps": 100.0, "stream_p99_ms": 2.0}
    ours = {"seq_read_s": 1.5, "iops_4k": 500.0, "read_1m_MBps": 79.0,
            "write_64k_MBps": 50.0, "stream_p99_ms": 25.0}
    print_table({"qemu-nbd": [qemu], "blockmon": [ours]})
    lines = capsys.readouterr().out.splitlines()[2:]
    assert len(lines) == len(ROWS)
    assert [line.rsplit("|", 2)[1].strip() for line in lines] == [
        "<= 1.2x NOT MET", ">= 0.4x met", ">= 0.8x NOT MET", "-", "<= 20.0 NOT MET"]
    assert "| 1.50x |" in lines[0]
