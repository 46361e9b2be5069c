"""The ``blockmon`` entry point: options, drives, servers, then a console, script or demo.

``main(argv) -> exit status``.  A bad option prints one line naming it (status
2); a drive that cannot be opened prints its error (status 1).  With ``-qmp`` or
``-monitor`` servers and standard input not a terminal, blockmon keeps serving
after its input ends until a ``quit`` arrives from any monitor.
"""
import sys
from typing import List, Optional

from monitor.daemon_options import parse_daemon_options
from monitor.drive_options import USAGE, UsageError, parse_command_line
from monitor.lifecycle import QuitSignal, StdinLines, terminate_on_signals

PROGRAM = "blockmon"


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version(PROGRAM)
    except PackageNotFoundError:  # not installed: running from a checkout
        return "0.1.0"


def _fail(message: str, status: int) -> int:
    sys.stderr.write("%s: %s\n" % (PROGRAM, message))
    return status


def open_drives(core, drives) -> Optional[str]:
    """Add every drive to the core; the error text of the first that fails, else None."""
    from commands.errors import CommandError
    from images.errors import BlockError
    for drive in drives:
        try:
            core.add_drive(drive.device, drive.path, format=drive.format,
                           node_name=drive.node_name, read_only=drive.read_only,
                           locking=drive.locking)
        except (CommandError, BlockError) as err:
            hint = "\n" + err.hint if getattr(err, "hint", None) else ""   # QEMU's second line
            return "-drive file=%s: %s%s" % (drive.path, err.desc, hint)
        except OSError as err:
            return "-drive file=%s: %s" % (drive.path, err.strerror or err)
    return None


def start_servers(core, options, on_quit):
    """The ``-qmp``/``-monitor`` servers, listening; raises MonitorStartError."""
    from monitor.servers import MonitorServers
    servers = MonitorServers(core, options.qmp_specs, options.monitor_specs, on_quit)
    servers.start()
    return servers


def nbd_server_factory(exports, address, max_connections):
    """The NBD server the core's export commands start (imported only when used)."""
    from monitor.nbd.server import NbdServer
    return NbdServer(exports, address, max_connections)


def start_exports(core, options) -> Optional[str]:
    """``--nbd-server`` and ``--export``: the error line of the first that fails, else None."""
    from commands.errors import CommandError
    if options.nbd_server is not None:
        try:
            core.execute("nbd-server-start", options.nbd_server)
        except CommandError as err:
            return "--nbd-server: %s" % err.desc
    for export in options.exports:
        try:
            core.execute("block-export-add", export)
        except CommandError as err:
            return "--export id=%s: %s" % (export["id"], err.desc)
    return None


def run_session(core, options, demo, quit_signal: "QuitSignal", serving: bool) -> int:
    """The console, the script, the ``-c`` commands or the walkthrough; the exit status."""
    from monitor.script import ScriptSession
    if options.walkthrough:
        from monitor.demo import play_walkthrough
        from monitor.events_view import event_line
        # Progress goes to stderr: drawn only when someone watches both streams.
        session = ScriptSession(core, sys.stdout, sys.stderr, echo=True,
                                err_is_tty=sys.stdout.isatty() and sys.stderr.isatty(),
                                event_format=lambda e: event_line(e, sys.stdout.isatty()))
        return play_walkthrough(core, demo, session, sys.stdout.write)
    if options.commands or not sys.stdin.isatty():
        session = ScriptSession(core, sys.stdout, sys.stderr, echo=not options.quiet and not options.commands,
                                err_is_tty=sys.stderr.isatty())
        lines = options.commands
        if not lines:
            # Read in a thread: a quit (or a signal) ends the session even while the
            # input is an open pipe that sends nothing.
            lines = StdinLines(sys.stdin.fileno())
            quit_signal.add_hook(lines.stop)
        ok = session.run_commands(lines, stop=quit_signal.event)
        # A server started by the script itself (nbd_server_start) keeps it serving too.
        serving = serving or core.exports.server is not None
        if serving and not session.quit_requested and not options.commands:
            quit_signal.event.wait()
        elif not session.quit_requested:
            ok = session.finish_jobs() and ok
        return session.close(ok)
    from monitor.repl import Repl, banner
    print(banner(version()))
    if demo is not None:
        print("\n".join(demo.summary()))
    repl = Repl(core)
    quit_signal.add_hook(repl.request_exit)
    repl.run()
    return 0


def _open_servers(core, options, quit_signal):
    """(the started servers or None, the one-line error or None)."""
    if not (options.qmp_specs or options.monitor_specs):
        return None, None
    # Imported only when asked for: asyncio alone is a good part of `-c quit`'s start-up.
    from monitor.servers import MonitorStartError
    try:
        return start_servers(core, options, quit_signal), None
    except MonitorStartError as err:
        return None, str(err)


def _build_demo(options):
    """The demo chain for ``--demo``; its drives replace the options' drives."""
    from monitor.demo import build_demo
    demo = build_demo(options.demo_dir)
    options.drives = demo.drives
    if options.walkthrough or not sys.stdin.isatty():
        print("\n".join(demo.summary()))
    return demo


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse_command_line(argv)
        parse_daemon_options(options)
    except UsageError as err:
        return _fail(str(err), 2)
    if options.show_help:
        sys.stdout.write(USAGE)
        return 0
    if options.show_version:
        print("%s %s" % (PROGRAM, version()))
        return 0
    demo = None
    if options.demo:
        from monitor.demo import DemoError
        try:
            demo = _build_demo(options)
        except DemoError as err:
            return _fail(str(err), 1)
    from commands.core import BlockCore
    core = BlockCore(nbd_server_factory=nbd_server_factory)
    error = open_drives(core, options.drives) or start_exports(core, options)
    if error:
        core.shutdown()
        return _fail(error, 1)
    return _serve(core, options, demo)


def _serve(core, options, demo) -> int:
    """Signals, servers and the session; the exit status."""
    quit_signal = QuitSignal()
    interactive = not (options.walkthrough or options.commands or not sys.stdin.isatty())
    restore_signals = terminate_on_signals(core, quit_signal, interactive)
    servers, error = _open_servers(core, options, quit_signal)
    try:
        if error:
            return _fail(error, 1)
        serving = servers is not None or options.nbd_server is not None
        return run_session(core, options, demo, quit_signal, serving=serving)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        # The core first, so that connected QMP clients still get SHUTDOWN and the
        # events of the jobs it cancels; then the servers.
        core.shutdown()
        if servers is not None:
            servers.stop()
        restore_signals()
