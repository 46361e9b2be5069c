"""blockmon as a storage daemon: ``--nbd-server``/``--export`` on the command line, the
refusals, the TCP warning, and a clean end on SIGTERM (``python -m monitor``)."""
import os
import signal
import subprocess
import sys

from conftest import ROOT, run
from nbd_helpers import Blockmon, build_chain, wait_for_socket


def blockmon(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "monitor"] + list(argv), cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, **kw)


def test_bad_daemon_options_are_one_line_usage_errors(tmp_path):
    result = blockmon("--nbd-server", "addr.type=unix")
    assert (result.returncode, result.stderr) == (
        2, "blockmon: --nbd-server addr.type=unix: addr.path=... is required\n")
    result = blockmon("--nbd-server", "addr.type=vsock,addr.path=x")
    assert result.returncode == 2 and "addr.type must be unix or inet, not 'vsock'" in result.stderr
    result = blockmon("--export", "type=fuse,id=e,node-name=n")
    assert (result.returncode, result.stderr) == (
        2, "blockmon: --export type=fuse,id=e,node-name=n: only type=nbd is supported\n")
    result = blockmon("--export", "type=nbd,id=e,node-name=n,writable=maybe")
    assert result.returncode == 2 and "writable expects on or off, got 'maybe'" in result.stderr


def test_an_export_of_an_unknown_node_fails_start_up(tmp_path):
    top = build_chain(str(tmp_path))
    sock = str(tmp_path / "nbd.sock")
    result = blockmon("-drive", "file=%s" % top, "--nbd-server",
                      "addr.type=unix,addr.path=%s" % sock,
                      "--export", "type=nbd,id=e,node-name=nosuch")
    assert (result.returncode, result.stderr) == (
        1, "blockmon: --export id=e: Cannot find device='' nor node-name='nosuch'\n")
    assert not os.path.exists(sock)
    result = blockmon("-drive", "file=%s" % top, "--export", "type=nbd,id=e,node-name=D")
    assert (result.returncode, result.stderr) == (1, "blockmon: --export id=e: NBD server not running\n")


def test_non_loopback_tcp_listener_warns_and_sigterm_ends_cleanly(tmp_path):
    top = build_chain(str(tmp_path))
    marker = str(tmp_path / "qmp.sock")
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "-drive", "file=%s" % top, "--nbd-server",
         "addr.type=inet,addr.host=0.0.0.0,addr.port=0", "--export",
         "type=nbd,id=e,node-name=D,name=disk", "-qmp", "unix:%s,server=on,wait=off" % marker],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_socket(marker, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "blockmon: warning: tcp:0.0.0.0:" in err and "NBD has no authentication" in err
    assert "No errors were found" in run("qemu-img", "check", top).stdout


def test_daemon_serves_until_quit_over_qmp(tmp_path):
    top = build_chain(str(tmp_path))
    daemon = Blockmon(top, str(tmp_path))
    qmp = daemon.qmp()
    assert [e["id"] for e in qmp.execute("query-block-exports")] == ["D"]
    assert "read 4096/4096" in run("qemu-io", "-f", "raw", "-c", "read -P 0xa1 0 4K",
                                   daemon.uri()).stdout
    qmp.send("quit")
    _, err = daemon.process.communicate(timeout=60)
    qmp.close()
    assert daemon.process.returncode == 0, err
    assert not os.path.exists(daemon.sock)
