"""Stream benchmark: blockmon against QEMU 7.2 and qemu-img, interleaved, medians, ratios.

    python -m bench.run_bench [--size 2G] [--runs 5] [--work DIR] [--no-scale] [--no-qemu]

Builds the benchmark chain (bench/make_chain.py) of SIZE once, then for every run
and every operation takes a fresh sparse copy, warms memory, and times blockmon
and its peer one after the other (A B A B ...).  Prints one table of medians and ratios
(blockmon / peer), then the spread (min median max) of every timed operation;
only the ratios mean anything across machines.  QEMU rows are left out when
qemu-system-x86_64 is not installed (or with --no-qemu).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from . import make_chain, peers

GiB = 1 << 30


def build_chain(size, work):
    directory = os.path.join(work, "chain-%s" % size)
    if not os.path.exists(os.path.join(directory, "D.qcow2")):
        make_chain.build_chain(size, directory)
    return directory


def build_big_virtual_chain(chain, work, virtual="1T"):
    """The same data in a chain of a much larger virtual size (qemu-img resize keeps the data;
    growing an image that has a backing file also marks the new tail as zero clusters, so
    B, C and D get L2 tables full of zero entries there: metadata, no data)."""
    directory = os.path.join(work, "chain-%s-virtual" % virtual)
    if not os.path.exists(os.path.join(directory, "D.qcow2")):
        subprocess.run(["cp", "-a", "--sparse=always", chain, directory], check=True)
        for name in ("A", "B", "C", "D"):
            subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2",
                            os.path.join(directory, name + ".qcow2"), virtual], check=True)
    return directory


class Fresh:
    """A fresh sparse copy of a chain for one timed operation, removed afterwards."""

    def __init__(self, chain, work):
        self.chain, self.work = chain, work

    def __enter__(self):
        self.path = tempfile.mkdtemp(dir=self.work, prefix="run-")
        os.rmdir(self.path)
        subprocess.run(["cp", "-a", "--sparse=always", self.chain, self.path], check=True)
        # Write the copy back now: left dirty, it would be flushed by whichever timed
        # operation happens to run when the kernel's writeback starts (or by its fsync).
        os.sync()
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def chain_gib(chain):
    total = sum(os.stat(os.path.join(chain, n)).st_blocks * 512 for n in os.listdir(chain))
    return total / GiB + 1


def collect(args):
    work = args.work or tempfile.mkdtemp(prefix="blockmon-bench-")
    chain = build_chain(args.size, work)
    big = None if args.no_scale else build_big_virtual_chain(chain, work)
    warm = chain_gib(chain)
    have_qemu = peers.qemu_system() is not None and not args.no_qemu
    samples = {}

    def timed(name, function, source, *extra):
        with Fresh(source, work) as copy:
            result = function(copy, warm, *extra)
        for key, value in result.items():
            samples.setdefault("%s.%s" % (name, key), []).append(value)

    moved = None
    for _ in range(args.runs):
        timed("blockmon_full", peers.blockmon_stream, chain)
        if have_qemu:
            timed("qemu_full", peers.qemu_stream, chain)
        timed("rebase", peers.qemu_img_rebase, chain)
        moved = moved or full_stream_bytes(chain)
        timed("copy", peers.plain_copy, chain, moved)
        timed("blockmon_base", peers.blockmon_stream, chain, "B.qcow2")
        if have_qemu:
            timed("qemu_base", peers.qemu_stream, chain, "B.qcow2")
        if big:
            timed("blockmon_big", peers.blockmon_stream, big)
        samples.setdefault("startup.time", []).append(peers.blockmon_startup()["time"])
        timed("latency", peers.guest_latency, chain)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return samples, moved, have_qemu


def full_stream_bytes(chain):
    """Bytes a full stream moves into D: what A, B and C hold that D does not (from qemu-img map)."""
    out = subprocess.run(["qemu-img", "map", "--output=json", os.path.join(chain, "D.qcow2")],
                         check=True, capture_output=True, text=True).stdout
    return sum(e["length"] for e in json.loads(out) if e["depth"] > 0 and e["data"])


def rows(m, moved, have_qemu, size="2G"):
    copy_scaled = m["copy.time"] * moved / m["copy.bytes"]
    table = [
        ("full stream, blockmon durable / qemu-img rebase", m["blockmon_full.event"], m["rebase.time"], 1.0),
        ("full stream, blockmon durable / plain copy bound", m["blockmon_full.event"], copy_scaled, None),
    ]
    if have_qemu:
        table[:0] = [
            ("full stream, blockmon durable / QEMU event+flush", m["blockmon_full.event"], m["qemu_full.durable"], 1.0),
            ("full stream, blockmon durable / QEMU bare event", m["blockmon_full.event"], m["qemu_full.event"], None),
        ]
        table.append(("stream base B, blockmon / QEMU event+flush", m["blockmon_base.event"],
                      m["qemu_base.durable"], 1.0))
        table.append(("stream base B, blockmon / QEMU bare event", m["blockmon_base.event"],
                      m["qemu_base.event"], None))
    if "blockmon_big.event" in m:
        table.append(("1 TiB virtual / %s virtual, same data" % size, m["blockmon_big.event"],
                      m["blockmon_full.event"], 1.3))
    return table


def report(samples, moved, have_qemu, size="2G", out=sys.stdout):
    m = {key: statistics.median(values) for key, values in samples.items()}
    runs = len(samples["blockmon_full.event"])
    print("blockmon stream benchmark: %s chain, %d run%s, medians; blockmon's times are to "
          "BLOCK_JOB_COMPLETED (data durable)" % (size, runs, "" if runs == 1 else "s"), file=out)
    print("%-52s %10s %10s %7s %7s" % ("comparison", "blockmon", "peer", "ratio", "target"), file=out)
    for label, ours, theirs, target in rows(m, moved, have_qemu, size):
        ratio = ours / theirs if theirs else float("inf")
        verdict = "" if target is None else ("met" if ratio <= target else "MISSED")
        print("%-52s %9.3fs %9.3fs %6.2fx %6s %s" % (label, ours, theirs, ratio,
              "-" if target is None else "%.1fx" % target, verdict), file=out)
    print("bytes moved by a full stream: %.1f MiB" % (moved / (1 << 20)), file=out)
    worst = {key: max(values) for key, values in samples.items()}
    print("peak RSS (worst run): full %.1f MiB, base B %.1f MiB%s (target <= 150 MiB)" % (
        worst["blockmon_full.rss"] / (1 << 20), worst["blockmon_base.rss"] / (1 << 20),
        ", 1 TiB virtual %.1f MiB" % (worst["blockmon_big.rss"] / (1 << 20))
        if "blockmon_big.rss" in worst else ""), file=out)
    print("guest 4 KiB writes (median of runs): idle p50 %.2f ms p99 %.2f ms; during a full-speed "
          "stream p50 %.2f ms p99 %.2f ms, worst run p99 %.2f ms (%d writes; target p99 <= 20 ms)" % (
              m["latency.idle_p50"] * 1e3, m["latency.idle_p99"] * 1e3, m["latency.stream_p50"] * 1e3,
              m["latency.stream_p99"] * 1e3, worst["latency.stream_p99"] * 1e3,
              m["latency.stream_writes"]), file=out)
    print("start-up, blockmon -c quit: %.3f s (target <= 0.5 s)" % m["startup.time"], file=out)
    if not have_qemu:
        print("QEMU rows left out: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)", file=out)
    spread(samples, out)


SPREAD_KEYS = (("blockmon_full.event", "blockmon full stream"),
               ("qemu_full.event", "QEMU full stream, event"),
               ("qemu_full.durable", "QEMU full stream, event+flush"),
               ("rebase.time", "qemu-img rebase -b ''"),
               ("copy.time", "plain copy (dd, fdatasync)"),
               ("blockmon_base.event", "blockmon stream base B"),
               ("qemu_base.event", "QEMU stream base B, event"),
               ("qemu_base.durable", "QEMU stream base B, event+flush"),
               ("blockmon_big.event", "blockmon full stream, 1 TiB virtual"),
               ("startup.time", "blockmon -c quit"))


def spread(samples, out):
    print("spread over runs (s): %-36s %7s %7s %7s" % ("operation", "min", "median", "max"), file=out)
    for key, label in SPREAD_KEYS:
        if key in samples:
            values = samples[key]
            print("                      %-36s %7.3f %7.3f %7.3f" % (
                label, min(values), statistics.median(values), max(values)), file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G", help="chain virtual size for bench.make_chain (default 2G)")
    parser.add_argument("--runs", type=int, default=5, help="runs per operation; medians are reported")
    parser.add_argument("--work", help="directory for chains and copies (kept); default a temporary one")
    parser.add_argument("--no-scale", action="store_true", help="skip the 1 TiB virtual-size chain")
    parser.add_argument("--no-qemu", action="store_true", help="leave QEMU out even when installed")
    args = parser.parse_args(argv)
    samples, moved, have_qemu = collect(args)
    report(samples, moved, have_qemu, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
