"""Commit benchmark: intermediate commit C -> A and active commit D -> A of the benchmark
chain, blockmon against QEMU 7.2's ``block-commit`` and offline ``qemu-img commit``;
with the same merges done by a stream, and ``x-blockmon-merge-cost``'s numbers.

    python -m bench.commit_bench [--size 2G] [--runs 3] [--work DIR] [--no-qemu]

Same protocol as bench/run_bench.py: a fresh sparse copy per run, memory warmed
right before the clock starts, blockmon and its peers interleaved, medians.
blockmon and QEMU are driven over QMP with the chain as ``virtio0``.  Intermediate
commit: ``block-commit`` to BLOCK_JOB_COMPLETED (blockmon's data and header are
durable then); QEMU also to the end of ``quit``, its flush.  Active commit: the
command to BLOCK_JOB_READY, then ``block-job-complete`` to the job's end ('null');
QEMU again also to the end of ``quit``.  ``qemu-img commit -b A.qcow2`` of C (resp.
D) is the offline peer (it leaves the overlay's header alone).
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

INTERMEDIATE = {"device": "virtio0", "top": "C.qcow2", "base": "A.qcow2"}
ACTIVE = {"device": "virtio0", "base": "A.qcow2"}


def _wait_status(qmp, status):
    while True:
        if qmp.wait_event("JOB_STATUS_CHANGE")["data"]["status"] == status:
            return


def _intermediate(qmp):
    qmp.execute("block-commit", INTERMEDIATE)
    event = qmp.wait_event("BLOCK_JOB_COMPLETED")
    if "error" in event["data"]:
        raise RuntimeError("commit failed: %s" % event["data"]["error"])
    return {}


def _active(qmp, start):
    qmp.execute("block-commit", ACTIVE)
    qmp.wait_event("BLOCK_JOB_READY")
    ready = time.perf_counter() - start
    qmp.execute("block-job-complete", {"device": "virtio0"})
    _wait_status(qmp, "null")
    return {"ready": ready}


def _stream(qmp):
    qmp.execute("block-stream", {"device": "virtio0", "base": "A.qcow2"})
    qmp.wait_event("BLOCK_JOB_COMPLETED")
    return {}


def _serve(argv, sock, warm_gib, operation):
    """Run one server, time ``operation`` from its command to its end and to after quit."""
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(argv, cwd=peers.ROOT, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
        try:
            qmp = QmpWire(sock, timeout=600)
            peers.touch_ram(warm_gib)
            start = time.perf_counter()
            result = _active(qmp, start) if operation == "active" else \
                (_intermediate(qmp) if operation == "intermediate" else _stream(qmp))
            result["done"] = time.perf_counter() - start
            qmp.send("quit")
            proc.wait(timeout=600)
            result["durable"] = time.perf_counter() - start
            qmp.close()
            return result
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read())
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def blockmon(chain_dir, warm_gib, operation):
    sock = os.path.join(tempfile.mkdtemp(prefix="bench-qmp-"), "qmp.sock")
    drive = "file=%s,if=none,id=virtio0" % os.path.join(chain_dir, "D.qcow2")
    return _serve([sys.executable, "-m", "monitor", "-drive", drive,
                   "-qmp", "unix:%s,server=on,wait=off" % sock], sock, warm_gib, operation)


def qemu(chain_dir, warm_gib, operation):
    sock = os.path.join(tempfile.mkdtemp(prefix="bench-qmp-"), "qmp.sock")
    return _serve([peers.qemu_system(), "-machine", "none", "-nodefaults", "-display", "none",
                   "-S", "-drive", "if=none,id=virtio0,file=%s,format=qcow2"
                   % os.path.join(chain_dir, "D.qcow2"),
                   "-qmp", "unix:%s,server=on,wait=off" % sock], sock, warm_gib, operation)


def qemu_img_commit(chain_dir, warm_gib, top):
    peers.touch_ram(warm_gib)
    start = time.perf_counter()
    subprocess.run(["qemu-img", "commit", "-q", "-f", "qcow2", "-b", "A.qcow2", top + ".qcow2"],
                   cwd=chain_dir, check=True)
    return {"time": time.perf_counter() - start}


def merge_cost(chain_dir):
    sock = os.path.join(tempfile.mkdtemp(prefix="bench-qmp-"), "qmp.sock")
    drive = "file=%s,if=none,id=virtio0" % os.path.join(chain_dir, "D.qcow2")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "-drive", drive,
                             "-qmp", "unix:%s,server=on,wait=off" % sock], cwd=peers.ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        qmp = QmpWire(sock)
        cost = qmp.execute("x-blockmon-merge-cost", {"device": "virtio0", "base": "A"})
        qmp.send("quit")
        proc.wait(timeout=60)
        return cost
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def collect(args):
    work = args.work or tempfile.mkdtemp(prefix="blockmon-bench-")
    chain = build_chain(args.size, work)
    warm = chain_gib(chain)
    have_qemu = peers.qemu_system() is not None and not args.no_qemu
    samples = {}

    def timed(name, function, *extra):
        with Fresh(chain, work) as copy:
            for key, value in function(copy, warm, *extra).items():
                samples.setdefault("%s.%s" % (name, key), []).append(value)

    for _ in range(args.runs):
        for operation in ("intermediate", "active"):
            timed("bm_" + operation, blockmon, operation)
            if have_qemu:
                timed("qemu_" + operation, qemu, operation)
        timed("img_C", qemu_img_commit, "C")
        timed("img_D", qemu_img_commit, "D")
        timed("bm_stream", blockmon, "stream")
    with Fresh(chain, work) as copy:
        cost = merge_cost(copy)
    return {k: statistics.median(v) for k, v in samples.items()}, samples, cost, have_qemu


def rows(m, have_qemu):
    table = [("intermediate commit C->A, blockmon durable / qemu-img commit", m["bm_intermediate.done"],
              m["img_C.time"], 1.0),
             ("active commit D->A, blockmon durable / qemu-img commit", m["bm_active.done"],
              m["img_D.time"], 1.0)]
    if have_qemu:
        table[:0] = [
            ("intermediate commit C->A, blockmon / QEMU event+flush", m["bm_intermediate.done"],
             m["qemu_intermediate.durable"], 1.0),
            ("intermediate commit C->A, blockmon / QEMU bare event", m["bm_intermediate.done"],
             m["qemu_intermediate.done"], None),
            ("active commit D->A to READY, blockmon / QEMU", m["bm_active.ready"],
             m["qemu_active.ready"], None),
            ("active commit D->A complete, blockmon / QEMU +flush", m["bm_active.done"],
             m["qemu_active.durable"], 1.0),
            ("active commit D->A complete, blockmon / QEMU bare", m["bm_active.done"],
             m["qemu_active.done"], None)]
    return table


def report(m, samples, cost, have_qemu):
    lines = ["%-64s %9s %9s %6s  %s" % ("comparison", "blockmon", "peer", "ratio", "target")]
    for name, ours, peer, target in rows(m, have_qemu):
        ratio = ours / peer
        verdict = "-" if target is None else "%.1fx %s" % (target, "met" if ratio <= target else "MISSED")
        lines.append("%-64s %8.3fs %8.3fs %5.2fx  %s" % (name, ours, peer, ratio, verdict))
    mib = 1 << 20
    lines.append("merge onto A (info merge-cost): stream writes %.1f MiB into D, commit writes "
                 "%.1f MiB into A" % ((cost["stream"]["data"] + cost["stream"]["zero"]) / mib,
                                      (cost["commit"]["data"] + cost["commit"]["zero"]) / mib))
    lines.append("same merge measured: blockmon stream onto A %.3fs, active commit D->A %.3fs"
                 % (m["bm_stream.done"], m["bm_active.done"]))
    lines.append("spread over runs (s): %-40s %7s %7s %7s" % ("operation", "min", "median", "max"))
    for key in sorted(samples):
        values = samples[key]
        lines.append("                      %-40s %7.3f %7.3f %7.3f"
                     % (key, min(values), statistics.median(values), max(values)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.commit_bench")
    parser.add_argument("--size", default="2G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work")
    parser.add_argument("--no-qemu", action="store_true")
    args = parser.parse_args(argv)
    print(report(*collect(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
