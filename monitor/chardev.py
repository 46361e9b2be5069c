"""Parsing of QEMU-style chardev specs for ``-qmp`` and ``-monitor``.

Only listening sockets are supported, in QEMU's spellings::

    unix:PATH,server=on,wait=off        tcp:HOST:PORT,server=on,wait=off
    unix:PATH,server,nowait             tcp:[::1]:PORT,server,nowait

As in QEMU's option parser, ``,,`` stands for a literal comma inside the path.
Boolean values take QEMU's spellings (``monitor.option_syntax``).
A missing ``wait`` option means ``wait=off``: blockmon never blocks start-up
waiting for a client.  Bad specs raise ``ChardevError`` with one line naming the
bad part; the CLI prints it and exits with status 2.
"""
import ipaddress
from dataclasses import dataclass

from monitor.option_syntax import parse_bool, split_commas, split_key_value

_SWITCHES = {"server": "server", "wait": "wait", "nowait": "wait", "noserver": "server"}


class ChardevError(ValueError):
    """A chardev spec that blockmon cannot listen on; ``str()`` is the one-line message."""


@dataclass(frozen=True)
class ChardevSpec:
    """A listening socket: ``kind`` is "unix" (``path``) or "tcp" (``host``, ``port``)."""

    kind: str
    text: str
    path: str = None
    host: str = None
    port: int = None

    def describe(self) -> str:
        if self.kind == "unix":
            return "unix:%s" % self.path
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "tcp:%s:%d" % (host, self.port)

    def is_loopback(self) -> bool:
        """True when only this machine can connect (unix sockets, 127.0.0.0/8, ::1, localhost)."""
        if self.kind == "unix":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_chardev(text: str) -> ChardevSpec:
    """Parse one ``-qmp``/``-monitor`` argument; raise ChardevError naming the bad part."""
    head, *options = split_commas(text)
    backend, sep, address = head.partition(":")
    if not sep or backend not in ("unix", "tcp"):
        raise ChardevError("chardev '%s': unsupported backend '%s' (use unix:PATH or tcp:HOST:PORT)"
                           % (text, backend if sep else head))
    _check_options(text, options)
    if backend == "unix":
        if not address:
            raise ChardevError("chardev '%s': unix socket path is empty" % text)
        return ChardevSpec("unix", text, path=address)
    host, port = _split_host_port(text, address)
    return ChardevSpec("tcp", text, host=host, port=port)


def _check_options(text: str, options):
    for option in options:
        name, value = split_key_value(option)
        if name not in _SWITCHES:
            raise ChardevError("chardev '%s': unsupported option '%s'" % (text, option))
        if value is not None:
            enabled = parse_bool(value)
            if name in ("nowait", "noserver") or enabled is None:
                raise ChardevError("chardev '%s': bad value in '%s' (expected on or off)" % (text, option))
        else:
            enabled = not name.startswith("no")
        key = _SWITCHES[name]
        if key == "server" and not enabled:
            raise ChardevError("chardev '%s': '%s' is not supported: blockmon only listens (server=on)"
                               % (text, option))
        if key == "wait" and enabled:
            raise ChardevError("chardev '%s': '%s' is not supported: blockmon never waits for a client "
                               "(use wait=off)" % (text, option))


def _split_host_port(text: str, address: str):
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ChardevError("chardev '%s': bad address '%s' (expected [IPV6]:PORT)" % (text, address))
        port_text = rest[1:]
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            raise ChardevError("chardev '%s': missing port in '%s' (expected HOST:PORT)" % (text, address))
        if ":" in host:
            raise ChardevError("chardev '%s': put an IPv6 address in brackets: '[%s]:%s'"
                               % (text, host, port_text))
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ChardevError("chardev '%s': bad port '%s' (expected 0-65535)" % (text, port_text))
    # An empty host means every interface, as in QEMU; is_loopback() then warns.
    return host or "0.0.0.0", int(port_text)
