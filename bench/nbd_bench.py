"""NBD export benchmark: blockmon's NBD server against qemu-nbd, same chain, same client, same run.

    python -m bench.nbd_bench --chain DIR [--runs 3] [--work DIR]
    python -m bench.nbd_bench --size 2G [--runs 3]     # build a chain with qemu-img first

``DIR`` holds a backing chain whose top is ``D.qcow2`` (e.g. one made by the project's
chain builder).  For every run both servers serve the chain one after the other
(qemu-nbd first, then blockmon, A B A B ...); rows:

- ``nbdcopy URI null:``: sequential read of the whole disk (read-only export, both
  servers advertise multi-conn: qemu-nbd with ``--shared=8``);
- ``qemu-img bench -c 100000 -d 16 -s 4096 -S 65536``: 4 KiB reads, IOPS;
- ``qemu-img bench -c N -d 8 -s 1M -S 1M``: 1 MiB reads at depth 8, MB/s;
- ``qemu-img bench -w -c N -d 16 -s 64K -S 64K``: 64 KiB writes at depth 16, MB/s,
  into a fresh overlay on top of the chain (the chain itself is never written).
- the guest's 4 KiB write latency over NBD (p99) while a full-speed ``block-stream``
  runs on a copy of the chain (bench/nbd_latency.py); QEMU's number comes from
  qemu-storage-daemon 7.2 with the same export and client (qemu-nbd runs no jobs).

Prints the best of the runs for each server (the latency: the median), the ratio
blockmon / QEMU, and each row's target with whether it is met.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from . import nbd_latency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20


def build_chain(size, directory):
    """A <- D with data in half of A's MiBs and a tenth of D's (holes elsewhere)."""
    os.makedirs(directory, exist_ok=True)
    a, d = os.path.join(directory, "A.qcow2"), os.path.join(directory, "D.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", a, size], check=True)
    total = int(subprocess.run(["qemu-img", "info", "--output=json", a], check=True,
                               capture_output=True, text=True).stdout.split('"virtual-size": ')[1]
                .split(",")[0])
    _qemu_io(a, ["write -P 0xa1 %d 1M" % (i * 2 * MiB) for i in range(total // (2 * MiB))])
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "A.qcow2", "-F", "qcow2", d],
                   check=True)
    _qemu_io(d, ["write -P 0xd4 %d 256K" % (i * 3 * MiB + MiB // 2)
                 for i in range(total // (3 * MiB))])
    return directory


def _qemu_io(path, commands):
    for start in range(0, len(commands), 500):
        argv = ["qemu-io", "-f", "qcow2"]
        for command in commands[start:start + 500]:
            argv += ["-c", command]
        subprocess.run(argv + [path], check=True, stdout=subprocess.DEVNULL)


class Server:
    """qemu-nbd or blockmon serving ``top`` on a unix socket as export ``D``."""

    def __init__(self, kind, top, writable, work):
        self.sock = os.path.join(tempfile.mkdtemp(dir=work, prefix="sock-"), "nbd.sock")
        if kind == "qemu-nbd":
            argv = ["qemu-nbd", "-t", "--shared=8", "-f", "qcow2", "-x", "D", "-k", self.sock,
                    "--cache=writeback", top]
            if not writable:
                argv.insert(1, "-r")
        else:
            argv = [sys.executable, "-m", "monitor", "-drive",
                    "file=%s,if=virtio%s" % (top, "" if writable else ",readonly=on"),
                    "--nbd-server", "addr.type=unix,addr.path=%s" % self.sock, "--export",
                    "type=nbd,id=D,node-name=virtio0,name=D,writable=%s" % ("on" if writable else "off")]
        self.process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        nbd_latency.wait_socket(self.sock, self.process)
        self.uri = "nbd+unix:///D?socket=%s" % self.sock

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def _timed(argv):
    start = time.monotonic()
    result = subprocess.run(argv, check=True, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    found = re.search(r"Run completed in ([0-9.]+) seconds", result.stdout)
    return float(found.group(1)) if found else elapsed


def read_rows(kind, chain_top, size, work):
    server = Server(kind, chain_top, False, work)
    try:
        subprocess.run(["nbdcopy", server.uri, "null:"], check=True)     # warm the page cache
        seq = _timed(["nbdcopy", server.uri, "null:"])
        iops = 100000 / _timed(["qemu-img", "bench", "-f", "raw", "-c", "100000", "-d", "16",
                                "-s", "4096", "-S", "65536", server.uri])
        count = size // MiB
        mb_1m = count * MiB / 1e6 / _timed(["qemu-img", "bench", "-f", "raw", "-c", str(count),
                                            "-d", "8", "-s", "1M", "-S", "1M", server.uri])
    finally:
        server.stop()
    return {"seq_read_s": seq, "iops_4k": iops, "read_1m_MBps": mb_1m}


def write_rows(kind, chain_top, size, work):
    overlay = os.path.join(tempfile.mkdtemp(dir=work, prefix="overlay-"), "E.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", chain_top, "-F", "qcow2",
                    overlay], check=True)
    server = Server(kind, overlay, True, work)
    try:
        count = min(size, 1 << 30) // (64 * 1024)
        seconds = _timed(["qemu-img", "bench", "-w", "-f", "raw", "-c", str(count), "-d", "16",
                          "-s", "64K", "-S", "64K", server.uri])
    finally:
        server.stop()
        shutil.rmtree(os.path.dirname(overlay))
    return {"write_64k_MBps": count * 65536 / 1e6 / seconds}


def latency_rows(kind, chain, work):
    """p99 of the guest's 4 KiB writes over NBD during a full-speed stream (bench.nbd_latency);
    QEMU's side is qemu-storage-daemon 7.2 (qemu-nbd runs no jobs), same export, same client."""
    server = "blockmon" if kind == "blockmon" else "qemu-storage-daemon"
    result = nbd_latency.measure(server, chain, work)
    return {"stream_p99_ms": result["stream_p99"] * 1e3}


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


# key, label, how runs combine, target: ("ratio", "<=", 1.2) on blockmon/qemu, or
# ("value", "<=", 20) on blockmon's own number; None: no target.
ROWS = (("seq_read_s", "nbdcopy whole disk to null: (s, best)", min, ("ratio", "<=", 1.2)),
        ("iops_4k", "4 KiB reads, depth 16 (IOPS, best)", max, ("ratio", ">=", 0.4)),
        ("read_1m_MBps", "1 MiB reads, depth 8 (MB/s, best)", max, ("ratio", ">=", 0.8)),
        ("write_64k_MBps", "64 KiB writes, depth 16 (MB/s, best)", max, None),
        ("stream_p99_ms", "4 KiB write p99 during a full-speed stream (ms, median; "
         "QEMU: qemu-storage-daemon)", _median, ("value", "<=", 20.0)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", help="directory holding the chain (top: D.qcow2)")
    parser.add_argument("--size", default="2G", help="size of the chain to build without --chain")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="nbd-bench-")
    chain = args.chain or build_chain(args.size, os.path.join(work, "chain"))
    top = os.path.join(chain, "D.qcow2")
    size = int(subprocess.run(["qemu-img", "info", "--output=json", top], check=True,
                              capture_output=True, text=True).stdout
               .split('"virtual-size": ')[1].split(",")[0])
    results = {"qemu-nbd": [], "blockmon": []}
    for _ in range(args.runs):
        for kind in ("qemu-nbd", "blockmon"):
            row = read_rows(kind, top, size, work)
            row.update(write_rows(kind, top, size, work))
            row.update(latency_rows(kind, chain, work))
            results[kind].append(row)
    print_table(results)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(results):
    print("| row | qemu-nbd | blockmon | ratio | target |")
    print("|---|---|---|---|---|")
    for key, label, best, target in ROWS:
        theirs = best([r[key] for r in results["qemu-nbd"]])
        ours = best([r[key] for r in results["blockmon"]])
        print("| %s | %s | %s | %.2fx | %s |" % (label, _number(theirs), _number(ours),
                                                 ours / theirs, _verdict(target, ours, theirs)))


def _number(value):
    return "%.0f" % value if value >= 100 else "%.3f" % value


def _verdict(target, ours, theirs):
    if target is None:
        return "-"
    what, relation, limit = target
    value = ours / theirs if what == "ratio" else ours
    met = value <= limit if relation == "<=" else value >= limit
    text = "%s %s%s" % (relation, limit, "x" if what == "ratio" else "")
    return "%s %s" % (text, "met" if met else "NOT MET")


if __name__ == "__main__":
    sys.exit(main())
