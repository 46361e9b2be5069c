"""QMP argument checking: QAPI's texts, schema order, classes."""
import pytest

from commands.errors import COMMAND_NOT_FOUND, GENERIC, CommandError, qmp_error
from commands.qmp_args import validate_arguments


def error_of(name, arguments):
    with pytest.raises(CommandError) as err:
        validate_arguments(name, arguments)
    return qmp_error(err.value)


@pytest.mark.parametrize("name, arguments", [
    ("block-stream", {"device": "virtio0"}),
    ("block-stream", {"job-id": "j1", "device": "virtio0", "base": "B.qcow2", "speed": 0,
                      "on-error": "stop", "auto-finalize": False, "auto-dismiss": True}),
    ("block-stream", {"device": "virtio0", "speed": -1}),     # the core refuses the value
    ("block-job-cancel", {"device": "j1", "force": True}),
    ("blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": "/x", "mode": "existing"}),
    ("query-block", {}), ("query-block", None), ("quit", {}),
    ("qmp_capabilities", {"enable": ["oob"]}),
    ("human-monitor-command", {"command-line": "info block"}),
    ("x-blockmon-qemu-io", {"device": "virtio0", "command": "map"}),
])
def test_accepted(name, arguments):
    assert validate_arguments(name, arguments) is None


@pytest.mark.parametrize("name, arguments, desc", [
    ("block-stream", {}, "Parameter 'device' is missing"),
    ("block-job-set-speed", {"device": "j1"}, "Parameter 'speed' is missing"),
    ("blockdev-snapshot-sync", {"device": "virtio0"}, "Parameter 'snapshot-file' is missing"),
    ("block-stream", {"device": "virtio0", "speed": "1M"},
     "Invalid parameter type for 'speed', expected: integer"),
    ("block-stream", {"device": "virtio0", "speed": 1.5},
     "Invalid parameter type for 'speed', expected: integer"),
    ("block-stream", {"device": "virtio0", "speed": True},
     "Invalid parameter type for 'speed', expected: integer"),
    ("block-stream", {"device": "virtio0", "speed": 1 << 63},
     "Invalid parameter type for 'speed', expected: integer"),
    ("block-stream", {"device": 7}, "Invalid parameter type for 'device', expected: string"),
    ("block-job-cancel", {"device": "j1", "force": "yes"},
     "Invalid parameter type for 'force', expected: boolean"),
    ("block-stream", {"device": "virtio0", "on-error": "bogus"},
     "Parameter 'on-error' does not accept value 'bogus'"),
    ("block-stream", {"device": "virtio0", "on-error": 1},
     "Invalid parameter type for 'on-error', expected: string"),
    ("blockdev-snapshot-sync", {"device": "v", "snapshot-file": "/x", "mode": "relative"},
     "Parameter 'mode' does not accept value 'relative'"),
    ("block-stream", {"device": "virtio0", "x": 1}, "Parameter 'x' is unexpected"),
    ("query-block-jobs", {"all": True}, "Parameter 'all' is unexpected"),
    ("qmp_capabilities", {"enable": "oob"}, "Invalid parameter type for 'enable', expected: array"),
    # missing members are reported before leftovers, as QEMU's visitor does
    ("block-stream", {"x": 1}, "Parameter 'device' is missing"),
])
def test_refused(name, arguments, desc):
    assert error_of(name, arguments) == {"class": GENERIC, "desc": desc}


def test_unknown_command():
    assert error_of("block-backup", {}) == {"class": COMMAND_NOT_FOUND,
                                             "desc": "The command block-backup has not been found"}
