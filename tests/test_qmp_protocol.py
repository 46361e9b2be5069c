"""The QMP wire protocol of monitor/qmp_server.py against a FakeCore, over real sockets."""
import json
import os
import socket
import threading

import pytest
from hypothesis import given, settings, strategies as st

from monitor.chardev import ChardevError, parse_chardev
from monitor.json_stream import JsonParseError, JsonSplitter
from monitor.servers import MonitorServers, MonitorStartError
from fake_core import TIMEOUT, VERSION, FakeCore
from qmp_clients import LineClient, QmpLineClient, remove_tree, short_tempdir, socket_mode

NEG = {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}


@pytest.fixture
def sockdir():
    path = short_tempdir()
    yield path
    remove_tree(path)


@pytest.fixture
def server(sockdir):
    core = FakeCore()
    quits = threading.Event()
    path = os.path.join(sockdir, "qmp.sock")
    servers = MonitorServers(core, ["unix:%s,server=on,wait=off" % path], [], on_quit=quits.set)
    servers.start()
    servers.path, servers.fake, servers.quits = path, core, quits
    yield servers
    core.gate.set()
    servers.stop()


def connect(server, negotiate=True):
    return QmpLineClient(server.path, negotiate=negotiate)


def error(desc, class_="GenericError", **extra):
    return dict({"error": {"class": class_, "desc": desc}}, **extra)


# -- greeting and negotiation --------------------------------------------------------------

def test_greeting_is_qemus_shape_with_crlf(server):
    client = LineClient(server.path)
    raw = client.read_line()
    assert raw.endswith(b"}\r\n")
    assert json.loads(raw) == {"QMP": {"version": VERSION, "capabilities": []}}
    assert raw == b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, ' \
                  b'"package": "blockmon 0.1.0"}, "capabilities": []}}\r\n'


def test_commands_before_negotiation_are_refused(server):
    client = connect(server, negotiate=False)
    assert client.cmd("query-version") == {"error": NEG}
    assert client.cmd("no-such-command", id=7) == {"error": NEG, "id": 7}
    assert server.fake.calls == [("query-version", {})]       # only the greeting reached the core
    assert client.cmd("qmp_capabilities", id="n") == {"return": {}, "id": "n"}
    assert client.cmd("query-version") == {"return": VERSION}


def test_second_negotiation_is_refused(server):
    client = connect(server)
    assert client.cmd("qmp_capabilities") == error(
        "Capabilities negotiation is already complete, command ignored", "CommandNotFound")
    assert client.cmd("query-block-jobs") == {"return": []}


@pytest.mark.parametrize("arguments, desc", [
    ({"enable": ["oob"]}, "Capability 'oob' not available"),
    ({"enable": ["x"]}, "Parameter 'enable[0]' does not accept value 'x'"),
    ({"enable": "oob"}, "Invalid parameter type for 'enable', expected: array"),
    ({"foo": 1}, "Parameter 'foo' is unexpected"),
])
def test_capabilities_arguments(server, arguments, desc):
    client = connect(server, negotiate=False)
    assert client.cmd("qmp_capabilities", arguments) == error(desc)
    assert client.cmd("query-version") == {"error": NEG}      # still not negotiated
    assert client.cmd("qmp_capabilities", {"enable": []}) == {"return": {}}


# -- requests, ids, errors --------------------------------------------------------------------

@pytest.mark.parametrize("ident", ["abc", 42, {"seq": [1, 2]}, None, 1.5])
def test_id_is_echoed_on_return_and_error(server, ident):
    client = connect(server)
    assert client.cmd("query-block-jobs", id=ident) == {"return": [], "id": ident}
    assert client.cmd("nope", id=ident) == dict(error("The command nope has not been found",
                                                      "CommandNotFound"), id=ident)


def test_core_errors_keep_class_and_text(server):
    client = connect(server)
    assert client.cmd("block-job-pause", {"device": "j1"}) == error(
        "Block job 'j1' not found", "DeviceNotActive")
    assert client.cmd("block-job-pause", {}) == error("Parameter 'device' is missing")
    assert client.cmd("block-job-pause", {"device": "j1", "x": 1}) == error("Parameter 'x' is unexpected")


@pytest.mark.parametrize("raw, expected", [
    (b'[1, 2]', error("QMP input must be a JSON object")),
    (b'42 ', error("QMP input must be a JSON object")),
    (b'"execute"', error("QMP input must be a JSON object")),
    (b'{"id": 3}', error("QMP input lacks member 'execute'", id=3)),
    (b'{"execute": 5, "id": 3}', error("QMP input member 'execute' must be a string", id=3)),
    (b'{"execute": "x-echo", "arguments": [1]}', error("QMP input member 'arguments' must be an object")),
    (b'{"execute": "x-echo", "foo": 1}', error("QMP input member 'foo' is unexpected")),
    (b'{"exec-oob": "query-version"}', error("QMP input member 'exec-oob' is unexpected")),
    (b'{"execute": }', error("JSON parse error, expecting value")),
    (b'{"execute": "x", }', error("JSON parse error, expecting property name enclosed in double quotes")),
    (b'}', error("JSON parse error, expecting value")),
    (b'{"execute": NaN}', error("JSON parse error, invalid keyword 'NaN'")),
])
def test_malformed_requests_get_qemus_errors_and_the_connection_lives(server, raw, expected):
    client = connect(server)
    client.send(raw + b"\n")
    assert client.read_json() == expected
    assert client.cmd("query-block-jobs", id=1) == {"return": [], "id": 1}


def test_stream_framing_without_newlines_and_across_lines(server):
    client = connect(server)
    # qemu.qmp sends objects back to back with no newline; socat users split them over lines.
    client.send(b'{"execute": "x-echo", "arguments": {"a": "}"}, "id": 1}{"execute": "x-echo", "id": 2}')
    assert client.read_json() == {"return": {"a": "}"}, "id": 1}
    assert client.read_json() == {"return": {}, "id": 2}
    client.send(b'{"execute":\n  "x-echo",\n')
    client.send(b' "arguments": {"s": "\\"{["}, "id": 3}\n')
    assert client.read_json() == {"return": {"s": '"{['}, "id": 3}


def test_a_bug_in_a_command_is_a_generic_error_and_serving_goes_on(server, capsys):
    client = connect(server)
    assert client.cmd("x-bug", id=9) == error("boom", id=9)
    assert "RuntimeError: boom" in capsys.readouterr().err
    assert client.cmd("query-version") == {"return": VERSION}


def test_quit_replies_then_signals_the_owner(server):
    client = connect(server)
    assert client.cmd("quit", id="q") == {"return": {}, "id": "q"}
    assert server.quits.wait(TIMEOUT)
    assert server.fake.quit_requested.is_set()


# -- robustness --------------------------------------------------------------------------------

def test_huge_line_is_refused_and_the_stream_resyncs(server):
    client = connect(server)
    other = connect(server)
    payload = b'{"execute": "x-echo", "arguments": {"s": "' + b"x" * (3 << 20) + b'"}}\n'
    sender = threading.Thread(target=client.send, args=(payload + b'{"execute": "query-version", "id": 2}',))
    sender.start()
    assert other.cmd("query-block-jobs") == {"return": []}        # unaffected meanwhile
    assert client.read_json() == error("JSON token size limit exceeded")
    assert client.read_json() == {"return": VERSION, "id": 2}
    sender.join(TIMEOUT)
    assert not sender.is_alive()


def test_huge_message_back_to_back_with_the_next_request(server):
    """No newline anywhere, as qemu.qmp sends: the error, then the next request's reply."""
    client = connect(server)
    payload = b'{"execute": "x-echo", "arguments": {"s": "' + b"x" * (3 << 20) + b'"}}'
    requests = payload + b'{"execute": "query-version", "id": 2}{"execute": "query-block-jobs", "id": 3}'
    sender = threading.Thread(target=client.send, args=(requests,))
    sender.start()
    assert client.read_json() == error("JSON token size limit exceeded")
    assert client.read_json() == {"return": VERSION, "id": 2}
    assert client.read_json() == {"return": [], "id": 3}
    sender.join(TIMEOUT)
    assert not sender.is_alive()


def test_flood_is_answered_in_order_and_others_are_served(server):
    flooder = connect(server)
    other = connect(server)
    count = 3000
    flooder.send(b"".join(b'{"execute": "query-block-jobs", "id": %d}' % i for i in range(count)))
    assert other.cmd("query-version") == {"return": VERSION}
    ids = [flooder.read_json()["id"] for _ in range(count)]
    assert ids == list(range(count))


def test_client_that_never_reads_is_dropped_alone(sockdir):
    core = FakeCore()
    path = os.path.join(sockdir, "q.sock")
    servers = MonitorServers(core, ["unix:%s,server,nowait" % path], [], max_outbuf=256 << 10)
    servers.start()
    try:
        hog = QmpLineClient(path)
        other = QmpLineClient(path)
        request = json.dumps({"execute": "x-echo", "arguments": {"s": "y" * 10000}}).encode()
        try:
            for _ in range(400):        # 4 MB of replies that are never read
                hog.send(request)
        except OSError:
            pass                        # the server dropped us mid-send
        assert other.cmd("query-version") == {"return": VERSION}
        received = 0
        with pytest.raises((EOFError, ConnectionResetError)):
            for _ in range(400):
                hog.read_line()
                received += 1
        assert received < 400
        assert other.cmd("query-block-jobs") == {"return": []}
    finally:
        servers.stop()


def test_disconnect_mid_command_affects_nobody(server):
    leaver = connect(server)
    leaver.send(b'{"execute": "x-slow"}')
    assert server.fake.slow_started.wait(TIMEOUT)
    leaver.close()                              # gone while the command runs
    other = connect(server)                     # a slow command stalls nobody else
    assert other.cmd("query-version") == {"return": VERSION}
    server.fake.gate.set()
    assert server.fake.slow_finished.wait(TIMEOUT)
    assert other.cmd("query-block-jobs") == {"return": []}
    assert connect(server).cmd("query-block-jobs") == {"return": []}


def test_events_fan_out_to_every_negotiated_client(server):
    clients = [connect(server) for _ in range(3)]
    shy = connect(server, negotiate=False)
    names = ["JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE"]
    datas = [{"id": "j", "status": "pending"}, {"type": "stream", "device": "j", "len": 4,
                                                 "offset": 4, "speed": 0}, {"id": "j", "status": "null"}]

    def publish():
        for name, data in zip(names, datas):
            server.fake.events.publish(name, data)
    worker = threading.Thread(target=publish)          # events come from job threads
    worker.start()
    worker.join(TIMEOUT)
    for client in clients:
        events = [client.read_json() for _ in names]
        assert [e["event"] for e in events] == names
        assert [e["data"] for e in events] == datas
        assert all(set(e["timestamp"]) == {"seconds", "microseconds"} for e in events)
        assert client.cmd("query-block-jobs") == {"return": []}     # nothing else was queued
    assert shy.cmd("qmp_capabilities") == {"return": {}}           # the un-negotiated got no event
    assert shy.cmd("query-block-jobs") == {"return": []}


def test_events_raised_by_a_command_come_before_its_reply(server):
    client = connect(server)
    reply = client.cmd("x-emit", {"event": "JOB_STATUS_CHANGE", "data": {"id": "a", "status": "created"}})
    assert reply["event"] == "JOB_STATUS_CHANGE"
    assert client.read_json() == {"return": {}}


# -- sockets: mode, addresses, bind errors ----------------------------------------------------

def test_unix_socket_is_0600_whatever_the_umask(sockdir):
    path = os.path.join(sockdir, "m.sock")
    old = os.umask(0)
    try:
        servers = MonitorServers(FakeCore(), ["unix:%s,server=on,wait=off" % path], []).start()
    finally:
        os.umask(old)
    try:
        assert socket_mode(path) == 0o600
    finally:
        servers.stop()
    assert not os.path.exists(path)            # removed on stop


def test_tcp_loopback_port_zero_reports_the_bound_port(capsys):
    servers = MonitorServers(FakeCore(), ["tcp:127.0.0.1:0,server=on,wait=off"], []).start()
    try:
        (address,) = servers.addresses
        host, port = address[len("tcp:"):].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert QmpLineClient(address=(host, int(port))).cmd("query-version") == {"return": VERSION}
        assert "warning" not in capsys.readouterr().err
    finally:
        servers.stop()


def test_non_loopback_bind_warns_about_authentication(monkeypatch, capsys):
    import monitor.servers as servers_module
    real_bind = servers_module.bind_tcp
    # Bind loopback for real, but through the code path of a 0.0.0.0 spec.
    monkeypatch.setattr(servers_module, "bind_tcp", lambda host, port: real_bind("127.0.0.1", 0))
    servers = MonitorServers(FakeCore(), ["tcp:0.0.0.0:4444,server=on,wait=off"], []).start()
    servers.stop()
    err = capsys.readouterr().err
    assert "non-loopback address" in err and "no authentication" in err


def test_bind_failures_are_one_line_errors(sockdir):
    first = MonitorServers(FakeCore(), ["tcp:127.0.0.1:0,server=on,wait=off"], []).start()
    try:
        taken = first.addresses[0]
        with pytest.raises(MonitorStartError) as info:
            MonitorServers(FakeCore(), [taken + ",server=on,wait=off"], []).start()
        assert str(info.value) == "cannot listen on %s: Address already in use" % taken
    finally:
        first.stop()
    regular = os.path.join(sockdir, "file")
    open(regular, "w").close()
    with pytest.raises(MonitorStartError) as info:
        MonitorServers(FakeCore(), ["unix:%s,server=on,wait=off" % regular], []).start()
    assert str(info.value) == "cannot listen on unix:%s: %s exists and is not a socket" % (regular, regular)
    assert os.path.isfile(regular)


def test_live_socket_is_refused_and_stale_one_replaced(sockdir):
    path = os.path.join(sockdir, "s.sock")
    live = MonitorServers(FakeCore(), ["unix:%s,server=on,wait=off" % path], []).start()
    try:
        with pytest.raises(MonitorStartError, match="is in use by a running server"):
            MonitorServers(FakeCore(), ["unix:%s,server=on,wait=off" % path], []).start()
    finally:
        live.stop()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                                # a socket file nobody listens on
    again = MonitorServers(FakeCore(), ["unix:%s,server=on,wait=off" % path], []).start()
    try:
        assert QmpLineClient(path).cmd("query-block-jobs") == {"return": []}
    finally:
        again.stop()


def test_bad_spec_names_the_option():
    with pytest.raises(ChardevError) as info:
        MonitorServers(FakeCore(), ["tcp:localhost:http,server=on"], [])
    assert str(info.value) == "-qmp: chardev 'tcp:localhost:http,server=on': bad port 'http' (expected 0-65535)"


# -- chardev specs ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, where", [
    ("unix:/run/q.sock,server=on,wait=off", "unix", "/run/q.sock"),
    ("unix:/run/q.sock,server,nowait", "unix", "/run/q.sock"),
    ("unix:/run/a,,b.sock,server=on", "unix", "/run/a,b.sock"),
    ("tcp:127.0.0.1:4444,server=on,wait=off", "tcp", ("127.0.0.1", 4444)),
    ("tcp:localhost:0,server,nowait", "tcp", ("localhost", 0)),
    ("tcp:[::1]:4444,server=on,wait=off", "tcp", ("::1", 4444)),
    ("tcp::4444,server=on,wait=off", "tcp", ("0.0.0.0", 4444)),
    ("unix:/run/q.sock,server=yes,wait=no", "unix", "/run/q.sock"),
    ("unix:/run/q.sock,server=y,wait=n", "unix", "/run/q.sock"),
    ("unix:/run/q.sock,server=true,wait=false", "unix", "/run/q.sock"),
])
def test_chardev_specs_parse(text, kind, where):
    spec = parse_chardev(text)
    assert spec.kind == kind
    assert (spec.path if kind == "unix" else (spec.host, spec.port)) == where


@pytest.mark.parametrize("text, problem", [
    ("stdio", "unsupported backend 'stdio' (use unix:PATH or tcp:HOST:PORT)"),
    ("pty:x", "unsupported backend 'pty' (use unix:PATH or tcp:HOST:PORT)"),
    ("unix:,server=on", "unix socket path is empty"),
    ("unix:/x,server=off", "'server=off' is not supported: blockmon only listens (server=on)"),
    ("unix:/x,server=on,wait=on", "'wait=on' is not supported: blockmon never waits for a client (use wait=off)"),
    ("unix:/x,server=maybe", "bad value in 'server=maybe' (expected on or off)"),
    ("unix:/x,telnet=on", "unsupported option 'telnet=on'"),
    ("tcp:127.0.0.1,server=on", "missing port in '127.0.0.1' (expected HOST:PORT)"),
    ("tcp:127.0.0.1:99999", "bad port '99999' (expected 0-65535)"),
    ("tcp:::1:4444", "put an IPv6 address in brackets: '[::1]:4444'"),
    ("tcp:[::1:4444", "bad address '[::1:4444' (expected [IPV6]:PORT)"),
])
def test_bad_chardev_specs_name_the_bad_part(text, problem):
    with pytest.raises(ChardevError) as info:
        parse_chardev(text)
    assert str(info.value) == "chardev '%s': %s" % (text, problem)


@pytest.mark.parametrize("text, loopback", [
    ("unix:/x", True), ("tcp:127.0.0.1:1", True), ("tcp:127.1.2.3:1", True), ("tcp:[::1]:1", True),
    ("tcp:localhost:1", True), ("tcp:0.0.0.0:1", False), ("tcp::1", False), ("tcp:10.0.0.1:1", False),
    ("tcp:example.com:1", False),
])
def test_loopback_detection(text, loopback):
    assert parse_chardev(text).is_loopback() is loopback


# -- the JSON splitter ------------------------------------------------------------------------

messages = st.lists(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab{}[]"\\ \n:,\u00e9'),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children,
                                                                       max_size=3),
    max_leaves=8).map(lambda value: {"v": value}), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20),
       st.sampled_from(["", "\n", " \r\n", "\t"]))
def test_splitter_recovers_messages_from_any_chunking(values, cuts, separator):
    stream = separator.join(json.dumps(v, ensure_ascii=False) for v in values).encode()
    splitter, out, pos, i = JsonSplitter(), [], 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        out += splitter.feed(stream[pos:pos + size])
        pos, i = pos + size, i + 1
    assert [json.loads(m) for m in out] == values


TOO_BIG = JsonParseError("JSON token size limit exceeded")
TOO_DEEP = JsonParseError("JSON nesting depth limit exceeded")


def test_splitter_limits_size_and_nesting_then_resyncs():
    splitter = JsonSplitter(limit=100)
    assert splitter.feed(b'{"a": "' + b"x" * 500) == [TOO_BIG]
    # The oversized message ends where its braces balance; the next one follows at once.
    assert splitter.feed(b'xx"}{"next": "kept"}\n{"b": 1} 7\n') == [b'{"next": "kept"}', b'{"b": 1}', b"7"]
    deep = JsonSplitter(limit=1 << 20)
    assert deep.feed(b"[" * 1025 + b"\n" + b"]" * 1025 + b"[]") == [TOO_DEEP, b"[]"]


NEXT = b'{"execute": "query-version", "id": 2}'


@pytest.mark.parametrize("oversized", [
    b'{"execute": "x", "arguments": {"s": "' + b"x" * 500 + b'", "t": [1, {"u": "}]\\""}]}}',
    b'{"s": "' + b'\\"' * 300 + b'{["}',                 # escaped quotes and brackets in the string
    b'"' + b"y" * 500 + b'"',                               # a top-level string
    b'[' + b'{"k": [1, 2]}, ' * 40 + b'{}]',                # many small tokens
    b"[" * 1025 + b"]" * 1025,                              # too deep, under the size limit
], ids=["object", "escapes", "string", "tokens", "deep"])
def test_splitter_answers_an_oversized_message_then_parses_the_next_back_to_back(oversized):
    """qemu.qmp sends messages back to back without newlines (as QEMU's json-streamer
    resets after a too-large token and goes on with the next bytes)."""
    expected = [TOO_DEEP if oversized.startswith(b"[[") else TOO_BIG, NEXT, b"7"]
    whole = JsonSplitter(limit=100 if not oversized.startswith(b"[[") else 4096)
    assert whole.feed(oversized + NEXT + b"7 ") == expected
    splitter, out, most = JsonSplitter(limit=whole.limit), [], 0
    for i in range(len(oversized + NEXT + b"7 ")):
        out += splitter.feed((oversized + NEXT + b"7 ")[i:i + 1])
        most = max(most, splitter.buffered)
    assert out == expected and most <= splitter.limit


@settings(max_examples=60, deadline=None)
@given(messages, st.integers(min_value=0, max_value=5), st.integers(min_value=1, max_value=300),
       st.sampled_from(["", "\n", " "]))
def test_splitter_resyncs_after_an_oversized_message_anywhere(values, where, cut, separator):
    texts = [json.dumps(v, ensure_ascii=False).encode() for v in values]
    limit = max(len(t) for t in texts) + 8
    where = min(where, len(texts))
    big = json.dumps({"execute": "x", "arguments": {"s": "{[\"" * limit}}).encode()
    stream = separator.encode().join(texts[:where] + [big] + texts[where:])
    splitter, out = JsonSplitter(limit=limit), []
    for pos in range(0, len(stream), cut):
        out += splitter.feed(stream[pos:pos + cut])
        assert splitter.buffered <= limit
    assert out == texts[:where] + [TOO_BIG] + texts[where:]


def test_owner_may_stop_the_servers_from_on_quit(sockdir):
    path = os.path.join(sockdir, "quit.sock")
    stopped = threading.Event()
    holder = {}

    def on_quit():
        holder["servers"].stop()            # runs in the server thread
        stopped.set()
    holder["servers"] = MonitorServers(FakeCore(), ["unix:%s,server=on,wait=off" % path], [],
                                       on_quit=on_quit).start()
    client = QmpLineClient(path)
    assert client.cmd("quit") == {"return": {}}
    assert stopped.wait(TIMEOUT)
    with pytest.raises(EOFError):
        client.read_line()                  # the connection is closed by the shutdown
    assert not os.path.exists(path)
    holder["servers"]._thread.join(TIMEOUT)
    assert not holder["servers"]._thread.is_alive()
    holder["servers"].stop()                # a second stop is harmless


def test_servers_use_the_spec_the_command_line_parsed():
    spec = parse_chardev("unix:/nonexistent-dir-xyz/q.sock,server=on,wait=off")
    servers = MonitorServers(FakeCore(), [spec], [spec])
    assert servers.qmp_specs == [spec] and servers.qmp_specs[0] is spec
    assert servers.monitor_specs[0] is spec
