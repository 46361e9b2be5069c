"""Backup benchmark: ``drive-backup`` full and incremental, blockmon against QEMU 7.2.

    python -m bench.backup_bench [--size 2G] [--runs 3] [--work DIR] [--no-scale]

Same protocol as the stream and mirror rows (bench/run_bench.py): a fresh sparse
copy of the chain per run, memory warmed right before the clock starts, blockmon
and QEMU one after the other, medians.  Both are driven over QMP with the chain as
``virtio0``.  Full: ``drive-backup sync=full`` to BLOCK_JOB_COMPLETED (blockmon
flushes the target before it), and QEMU also to the end of ``quit`` (its flush at
close: the durable time).  Incremental: a bitmap is added, 64 MiB of scattered
guest writes (1024 x 64 KiB, HMP ``qemu-io`` through the device) go in untimed,
then ``drive-backup sync=incremental`` is timed the same way; the bytes it copied
are the job's ``len``.  The same writes on the chain grown to a 1 TiB virtual
size (run_bench.build_big_virtual_chain) show that the time follows the dirty
bytes, not the disk size.
"""
import argparse
import json
import os
import random
import statistics
import sys
import subprocess
import tempfile
import time

from . import peers
from .qmp_wire import QmpWire
from .run_bench import Fresh, build_big_virtual_chain, build_chain, chain_gib

WRITES, WRITE_SIZE = 1024, 65536         # 64 MiB of guest writes


def scattered_offsets(size, seed=14):
    """WRITES distinct 64 KiB-aligned offsets spread over [0, size)."""
    return sorted(index * WRITE_SIZE
                  for index in random.Random(seed).sample(range(size // WRITE_SIZE), WRITES))


def _argv(kind, chain_dir, sock):
    top = os.path.join(chain_dir, "D.qcow2")
    if kind == "blockmon":
        return [sys.executable, "-m", "monitor", "-drive", "file=%s,if=none,id=virtio0" % top,
                "-qmp", "unix:%s,server=on,wait=off" % sock]
    return [peers.qemu_system(), "-machine", "none", "-nodefaults", "-display", "none", "-S",
            "-drive", "if=none,id=virtio0,file=%s,format=qcow2" % top,
            "-qmp", "unix:%s,server=on,wait=off" % sock]


def _backup(kind, chain_dir, warm_gib, sync, disk_size=None):
    """One timed drive-backup; for sync=incremental the bitmap and the writes come first."""
    sock = os.path.join(tempfile.mkdtemp(prefix="bench-qmp-"), "qmp.sock")
    target = os.path.join(chain_dir, "backup.qcow2")
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(_argv(kind, chain_dir, sock), cwd=peers.ROOT,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            qmp = QmpWire(sock)
            arguments = {"device": "virtio0", "sync": sync, "target": target, "format": "qcow2"}
            if sync == "incremental":
                qmp.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "bm0"})
                for offset in scattered_offsets(disk_size):
                    qmp.execute("human-monitor-command", {"command-line": "qemu-io virtio0 "
                                "\"write -P 0x5c %d %d\"" % (offset, WRITE_SIZE)})
                arguments["bitmap"] = "bm0"
            peers.touch_ram(warm_gib)
            start = time.perf_counter()
            qmp.execute("drive-backup", arguments)
            event = qmp.wait_event("BLOCK_JOB_COMPLETED")
            completed = time.perf_counter() - start
            if "error" in event["data"]:
                raise RuntimeError("%s backup failed: %s" % (kind, event["data"]["error"]))
            qmp.send("quit")
            proc.wait(timeout=300)
            durable = time.perf_counter() - start
            qmp.close()
            return {"completed": completed, "durable": durable, "bytes": event["data"]["len"]}
        except BaseException:
            log.seek(0)
            sys.stderr.write("%s output:\n%s" % (kind, log.read()))
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _virtual_size(chain_dir):
    out = subprocess.run(["qemu-img", "info", "--output=json", os.path.join(chain_dir, "D.qcow2")],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["virtual-size"]


def collect(args):
    work = args.work or tempfile.mkdtemp(prefix="blockmon-backup-bench-")
    chain = build_chain(args.size, work)
    big = None if args.no_scale else build_big_virtual_chain(chain, work)
    warm = chain_gib(chain) * 2
    size = _virtual_size(chain)
    kinds = ["blockmon"] + (["qemu"] if peers.qemu_system() is not None else [])
    samples = {}

    def timed(name, source, *extra):
        with Fresh(source, work) as copy:
            for key, value in _backup(name.split("_")[0], copy, warm, *extra).items():
                samples.setdefault("%s.%s" % (name, key), []).append(value)

    for _ in range(args.runs):
        for kind in kinds:
            timed(kind + "_full", chain, "full")
            timed(kind + "_inc", chain, "incremental", size)
        if big:
            timed("blockmon_incbig", big, "incremental", size)
    return samples


def report(samples, size, out=sys.stdout):
    m = {key: statistics.median(values) for key, values in samples.items()}
    runs = len(samples["blockmon_full.completed"])
    print("backup benchmark: %s chain, %d run%s, medians; blockmon's times are to "
          "BLOCK_JOB_COMPLETED (target durable)" % (size, runs, "" if runs == 1 else "s"), file=out)
    print("%-58s %9s %9s %7s %7s" % ("comparison", "blockmon", "peer", "ratio", "target"), file=out)
    rows = [("drive-backup full: blockmon / QEMU event+flush", "blockmon_full.completed",
             "qemu_full.durable", 1.0),
            ("drive-backup full: blockmon / QEMU bare event", "blockmon_full.completed",
             "qemu_full.completed", None),
            ("incremental, 64 MiB dirty: blockmon / QEMU event+flush", "blockmon_inc.completed",
             "qemu_inc.durable", None),
            ("incremental, 64 MiB dirty: blockmon / QEMU bare event", "blockmon_inc.completed",
             "qemu_inc.completed", None),
            ("incremental, 1 TiB virtual / %s virtual, same writes" % size,
             "blockmon_incbig.completed", "blockmon_inc.completed", 1.3)]
    for label, ours, theirs, target in rows:
        if ours in m and theirs in m:
            ratio = m[ours] / m[theirs]
            verdict = "" if target is None else ("met" if ratio <= target else "MISSED")
            print("%-58s %8.3fs %8.3fs %6.2fx %6s %s" % (
                label, m[ours], m[theirs], ratio, "-" if target is None else "%.1fx" % target,
                verdict), file=out)
    for name, label in (("blockmon_full", "full"), ("blockmon_inc", "incremental"),
                        ("qemu_inc", "QEMU incremental"),
                        ("blockmon_incbig", "incremental, 1 TiB virtual")):
        if name + ".bytes" in m:
            print("bytes copied, %s: %.1f MiB" % (label, m[name + ".bytes"] / (1 << 20)), file=out)
    print("spread over runs (s): %-36s %7s %7s %7s" % ("operation", "min", "median", "max"), file=out)
    for key in sorted(samples):
        if not key.endswith(".bytes"):
            values = samples[key]
            print("                      %-36s %7.3f %7.3f %7.3f" % (
                key, min(values), statistics.median(values), max(values)), file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", help="directory for chains and copies (kept)")
    parser.add_argument("--no-scale", action="store_true", help="skip the 1 TiB virtual chain")
    args = parser.parse_args(argv)
    report(collect(args), args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
