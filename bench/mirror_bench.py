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


def guest_latency(chain_dir, warm_gib):
    """4 KiB guest writes through the device while a full-speed mirror runs (a child process)."""
    out = subprocess.run([sys.executable, "-m", "bench.mirror_bench", "--latency",
                          os.path.join(chain_dir, "D.qcow2"), "--warm", "%.2f" % warm_gib],
                         cwd=peers.ROOT, check=True, capture_output=True, text=True).stdout
    return {key: float(value) for key, value in (item.split("=") for item in out.split())}


def latency_main(path, warm_gib):
    """Guest writes (random 4 KiB, the device's guest path) from drive-mirror to READY;
    prints the p50/p99 latencies and the bytes the mirror copied a second time."""
    import random
    from commands.core import BlockCore
    from .latency import percentile
    core = BlockCore()
    core.add_drive("virtio0", path)
    backend, rng, samples = core.backend("virtio0"), random.Random(1), []
    blocks = backend.virtual_size // 4096
    peers.touch_ram(warm_gib)
    core.execute("drive-mirror", {"device": "virtio0", "sync": "full",
                                  "target": os.path.join(os.path.dirname(path), "lat.qcow2")})
    initial = core.execute("query-block-jobs")[0]["len"]
    while core.execute("query-block-jobs")[0]["status"] != "ready":
        start = time.perf_counter()
        backend.write(rng.randrange(blocks) * 4096, b"\x5a" * 4096)
        samples.append(time.perf_counter() - start)
        time.sleep(0.001)       # a guest issuing writes, not a tight loop
    again = core.execute("query-block-jobs")[0]["offset"] - initial
    core.shutdown()
    print("p50=%f p99=%f writes=%d twice=%d" % (percentile(samples or [0], 0.5),
                                                 percentile(samples or [0], 0.99),
                                                 len(samples), again))


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
    if "latency.p99" in m:
        print("guest 4 KiB writes during a full-speed mirror: p50 %.2f ms p99 %.2f ms (%d writes; "
              "target p99 <= 20 ms); copied twice: %.1f MiB" % (
                  m["latency.p50"] * 1e3, m["latency.p99"] * 1e3, m["latency.writes"],
                  m["latency.twice"] / (1 << 20)), file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work")
    parser.add_argument("--latency", metavar="IMAGE", help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.latency:
        latency_main(args.latency, args.warm)
        return 0
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
        with Fresh(chain, work) as copy:
            for key, value in guest_latency(copy, warm).items():
                samples.setdefault("latency.%s" % key, []).append(value)
    report(samples, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
