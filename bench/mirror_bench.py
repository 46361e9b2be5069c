"""Mirror benchmark: ``drive-mirror sync=full`` of the benchmark chain, blockmon against QEMU 7.2.

    python -m bench.mirror_bench [--size 2G] [--runs 3] [--work DIR]

Same protocol as the stream rows (bench/run_bench.py): a fresh sparse copy of the
chain per run, memory warmed right before the clock starts, blockmon and QEMU
interleaved, medians.  Both are driven over QMP with the chain as ``virtio0``:
the time from ``drive-mirror`` to BLOCK_JOB_READY, and to the switch being done
(``block-job-complete`` then JOB_STATUS_CHANGE null).  blockmon's target is
flushed before READY and before the switch; QEMU's is not, so QEMU is also timed
to the end of ``quit`` (its flush at close), the durable time.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from . import peers
from .qmp_wire import QmpWire
from .run_bench import Fresh, build_chain, chain_gib


def _wait_status(qmp, status):
    while True:
        event = qmp.wait_event("JOB_STATUS_CHANGE")
        if event["data"]["status"] == status:
            return event


def _timed_mirror(qmp, target):
    """Command to READY, and to the end of the switch; both from the command."""
    start = time.perf_counter()
    qmp.execute("drive-mirror", {"device": "virtio0", "target": target, "sync": "full"})
    qmp.wait_event("BLOCK_JOB_READY")
    ready = time.perf_counter() - start
    qmp.execute("block-job-complete", {"device": "virtio0"})
    _wait_status(qmp, "null")
    switched = time.perf_counter() - start
    return start, ready, switched


def _run(argv, sock, warm_gib, target, log):
    proc = subprocess.Popen(argv, cwd=peers.ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        qmp = QmpWire(sock)
        peers.touch_ram(warm_gib)
        start, ready, switched = _timed_mirror(qmp, target)
        qmp.send("quit")
        proc.wait(timeout=300)
        durable = time.perf_counter() - start
        qmp.close()
        return {"ready": ready, "switched": switched, "durable": durable}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def blockmon_mirror(chain_dir, warm_gib):
    sock = os.path.join(tempfile.mkdtemp(prefix="bench-qmp-"), "qmp.sock")
    drive = "file=%s,if=none,id=virtio0" % os.path.join(chain_dir, "D.qcow2")
    with tempfile.TemporaryFile(mode="w+") as log:
        return _run([sys.executable, "-m", "monitor", "-drive", drive,
                     "-qmp", "unix:%s,server=on,wait=off" % sock],
                    sock, warm_gib, os.path.join(chain_dir, "mirror.qcow2"), log)


def qemu_mirror(chain_dir, warm_gib):
    sock = os.path.join(tempfile.mkdtemp(prefix="bench-qmp-"), "qmp.sock")
    with tempfile.TemporaryFile(mode="w+") as log:
        return _run([peers.qemu_system(), "-machine", "none", "-nodefaults", "-display", "none",
                     "-S", "-drive", "if=none,id=virtio0,file=%s,format=qcow2"
                     % os.path.join(chain_dir, "D.qcow2"),
                     "-qmp", "unix:%s,server=on,wait=off" % sock],
                    sock, warm_gib, os.path.join(chain_dir, "mirror.qcow2"), log)


ROWS = (("drive-mirror full: to READY, blockmon / QEMU", "blockmon.ready", "qemu.ready"),
        ("drive-mirror full: switched, blockmon / QEMU", "blockmon.switched", "qemu.switched"),
        ("drive-mirror full: durable, blockmon switched / QEMU quit", "blockmon.switched",
         "qemu.durable"))


def report(samples, size, out=sys.stdout):
    m = {key: statistics.median(values) for key, values in samples.items()}
    runs = len(samples["blockmon.ready"])
    print("mirror benchmark: %s chain, %d run%s, medians (target: durable <= 1.0x, aim 0.8x)"
          % (size, runs, "" if runs == 1 else "s"), file=out)
    print("%-58s %9s %9s %7s" % ("comparison", "blockmon", "QEMU", "ratio"), file=out)
    for label, ours, theirs in ROWS:
        if theirs in m:
            print("%-58s %8.3fs %8.3fs %6.2fx" % (label, m[ours], m[theirs], m[ours] / m[theirs]),
                  file=out)
    print("blockmon to READY %.3fs, to the switch %.3fs, to the end of quit %.3fs" % (
        m["blockmon.ready"], m["blockmon.switched"], m["blockmon.durable"]), file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work")
    parser.add_argument("--shared-bench", default=peers.SHARED_BENCH,
                        help="the directory of make_chain.sh and touch_ram.py")
    args = parser.parse_args(argv)
    peers.SHARED_BENCH = args.shared_bench
    work = args.work or tempfile.mkdtemp(prefix="blockmon-mirror-bench-")
    chain = build_chain(args.size, work)
    warm = chain_gib(chain) * 2
    samples = {}
    for _ in range(args.runs):
        runners = [("blockmon", blockmon_mirror)]
        if peers.qemu_system() is not None:
            runners.append(("qemu", qemu_mirror))
        for name, runner in runners:
            with Fresh(chain, work) as copy:
                for key, value in runner(copy, warm).items():
                    samples.setdefault("%s.%s" % (name, key), []).append(value)
    report(samples, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
