"""A minimal synchronous QMP client for timing: no library between the clock and the socket."""
import json
import socket
import time


class QmpWire:
    def __init__(self, path, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")
        self.events = []
        self.greeting = self._receive()
        self.execute("qmp_capabilities")

    def _receive(self):
        line = self.reader.readline()
        if not line:
            raise EOFError("QMP peer closed the connection")
        return json.loads(line)

    def send(self, name, arguments=None):
        message = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def execute(self, name, arguments=None):
        self.send(name, arguments)
        while True:
            message = self._receive()
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                raise RuntimeError("%s: %s" % (name, message["error"]["desc"]))
            return message["return"]

    def wait_event(self, name):
        for index, event in enumerate(self.events):
            if event["event"] == name:
                return self.events.pop(index)
        while True:
            message = self._receive()
            if message.get("event") == name:
                return message
            if "event" in message:
                self.events.append(message)

    def close(self):
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass
