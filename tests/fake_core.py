"""A stand-in for commands.core.BlockCore that records ``execute`` calls.

It checks arguments against the command table's QMP schemas as the real core
does, and answers with canned QEMU-shaped results (or raises canned errors).
"""
from commands.qmp_args import validate_arguments

QUERY_BLOCK_D = [{
    "device": "virtio0", "qdev": "", "locked": False, "removable": False, "type": "unknown",
    "io-status": "ok",
    "inserted": {
        "file": "/images/s1/D.qcow2", "node-name": "#block195", "ro": False, "drv": "qcow2",
        "backing_file": "/images/s1/C.qcow2", "backing_file_depth": 3, "encrypted": False,
        "detect_zeroes": "off", "cache": {"writeback": True, "direct": False, "no-flush": False},
        "image": {"filename": "/images/s1/D.qcow2", "format": "qcow2",
                  "virtual-size": 2147483648, "actual-size": 1382838272},
    },
}]


class FakeCore:
    def __init__(self, **responses):
        self.calls = []
        self.responses = {"query-block-jobs": [], "query-block": [], "x-blockmon-qemu-io": "",
                          "query-version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                            "package": "blockmon 0.1.0"}}
        self.responses.update({k.replace("_", "-"): v for k, v in responses.items()})
        self.waited = []

    def execute(self, name, arguments=None):
        arguments = dict(arguments or {})
        validate_arguments(name, arguments)
        self.calls.append((name, arguments))
        answer = self.responses.get(name, {})
        if isinstance(answer, Exception):
            raise answer
        return answer(arguments) if callable(answer) else answer

    def wait_jobs(self, job_id=None, timeout=None):
        self.waited.append(job_id)
        return True

    def device_names(self):
        return [info["device"] for info in self.responses["query-block"]]
