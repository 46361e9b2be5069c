"""Where the console keeps its command history across sessions.

``$XDG_STATE_HOME/blockmon/history``, else ``~/.local/state/blockmon/history``
(the XDG base-directory rule for state).  A history that cannot be written falls
back to memory: the console must start even on a read-only home.
"""
import os

from prompt_toolkit.history import FileHistory, History, InMemoryHistory


def history_path(environ=None) -> str:
    environ = os.environ if environ is None else environ
    state = environ.get("XDG_STATE_HOME")
    if not state or not os.path.isabs(state):
        state = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "blockmon", "history")


def open_history(path: str) -> History:
    """A FileHistory at ``path`` (directories created), or an in-memory one if that fails."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError:
        return InMemoryHistory()
    return FileHistory(path)
