"""Real QMP clients against our server: qemu.qmp's QMPClient, its legacy sync API, and qmp-shell.

They run against a FakeCore here; tests/test_qmp_acceptance.py repeats the
scenarios against the real BlockCore.
"""
import asyncio
import os
import threading

import pytest

qmp = pytest.importorskip("qemu.qmp", reason="needs the qemu.qmp client library: pip install qemu.qmp")
from qemu.qmp import ExecuteError, QMPClient                       # noqa: E402
from qemu.qmp.legacy import QEMUMonitorProtocol                    # noqa: E402

from monitor.servers import MonitorServers                          # noqa: E402
from fake_core import TIMEOUT, VERSION, FakeCore  # noqa: E402
from qmp_clients import remove_tree, run_qmp_shell, short_tempdir  # noqa: E402

COMPLETED = {"type": "stream", "device": "virtio0", "len": 65536, "offset": 65536, "speed": 0}


@pytest.fixture
def served():
    directory = short_tempdir()
    core = FakeCore()
    path = os.path.join(directory, "qmp.sock")
    servers = MonitorServers(core, ["unix:%s,server=on,wait=off" % path], []).start()
    yield core, path
    core.gate.set()
    servers.stop()
    remove_tree(directory)


def publish_later(core, name, data):
    """Publish from another thread, as a job thread would."""
    worker = threading.Thread(target=core.events.publish, args=(name, data))
    worker.start()
    return worker


def test_qmpclient_connects_negotiates_executes_and_listens(served):
    core, path = served

    async def session():
        client = QMPClient("blockmon-test")
        await asyncio.wait_for(client.connect(path), TIMEOUT)
        try:
            assert client.greeting.QMP.version == VERSION
            assert await asyncio.wait_for(client.execute("query-version"), TIMEOUT) == VERSION
            with pytest.raises(ExecuteError) as info:
                await asyncio.wait_for(client.execute("block-job-pause", {"device": "j9"}), TIMEOUT)
            assert info.value.error_class == "DeviceNotActive"
            assert str(info.value) == "Block job 'j9' not found"
            with client.listener() as listener:
                worker = publish_later(core, "BLOCK_JOB_COMPLETED", COMPLETED)
                event = await asyncio.wait_for(listener.get(), TIMEOUT)
                worker.join(TIMEOUT)
            assert event["event"] == "BLOCK_JOB_COMPLETED" and event["data"] == COMPLETED
            assert await asyncio.wait_for(client.execute("query-block-jobs"), TIMEOUT) == []
        finally:
            await asyncio.wait_for(client.disconnect(), TIMEOUT)

    asyncio.run(session())


def test_legacy_sync_client(served):
    core, path = served
    monitor = QEMUMonitorProtocol(path)
    try:
        greeting = monitor.connect(negotiate=True)
        assert greeting["QMP"]["capabilities"] == []
        assert monitor.cmd("query-block-jobs") == []
        assert monitor.cmd_raw("block-job-pause", {"device": "j1"}) == {
            "error": {"class": "DeviceNotActive", "desc": "Block job 'j1' not found"}}
        publish_later(core, "BLOCK_JOB_COMPLETED", COMPLETED).join(TIMEOUT)
        event = monitor.pull_event(wait=float(TIMEOUT))
        assert (event["event"], event["data"]) == ("BLOCK_JOB_COMPLETED", COMPLETED)
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
    finally:
        monitor.close()


def test_qmp_shell_in_qmp_mode(served, tmp_path):
    _, path = served
    result = run_qmp_shell(path, ["query-version", "block-job-pause device=j1", "query-block-jobs"],
                           home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Connected to QEMU 7.2.0" in result.stdout
    assert '{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "blockmon 0.1.0"}}' \
        in result.stdout
    assert '{"error": {"class": "DeviceNotActive", "desc": "Block job \'j1\' not found"}}' in result.stdout
    assert '{"return": []}' in result.stdout


def test_qmp_shell_in_hmp_mode(served, tmp_path):
    _, path = served
    result = run_qmp_shell(path, ["info block-jobs", "block_job_pause j1"], "-H", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Welcome to the HMP shell!" in result.stdout
    # qmp-shell prints the returned string as is (text mode turns its CRLF into LF).
    assert "(QEMU) No active jobs\n (QEMU) Error: Block job 'j1' not found\n (QEMU) " in result.stdout
