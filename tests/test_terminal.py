"""A real terminal: blockmon in tmux, driven by send-keys and read with capture-pane.

Tab completes a command and a device, a speed-limited stream shows its progress
moving in the bottom toolbar, the completion event appears above the prompt while
a half-typed line survives, and Ctrl-D leaves.  Every wait polls with a deadline.
"""
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import skip_or_fail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = 60.0


@pytest.fixture(autouse=True)
def tmux_required():
    """CI installs tmux, so there its absence fails; elsewhere the test skips with a hint."""
    if shutil.which("tmux") is None:
        skip_or_fail("needs tmux: apt-get install -y tmux")


class Tmux:
    """One detached tmux server (private socket) running one command."""

    def __init__(self, command, env):
        self.socket = "blockmon-test-%s" % uuid.uuid4().hex[:8]
        self._tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "40",
                   " ".join(["env"] + ["%s=%s" % item for item in env.items()] + command))
        self._tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def _tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket] + list(args), capture_output=True,
                              text=True, timeout=20).stdout

    def keys(self, *keys):
        self._tmux("send-keys", "-t", "t", *keys)

    def screen(self):
        return self._tmux("capture-pane", "-p", "-t", "t")

    def dead(self):
        return self._tmux("display-message", "-p", "-t", "t", "#{pane_dead}").strip() == "1"

    def wait(self, predicate, what):
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            screen = self.screen()
            found = predicate(screen)
            if found:
                return found
            time.sleep(0.1)
        pytest.fail("timed out waiting for %s; screen:\n%s" % (what, self.screen()))

    def close(self):
        self._tmux("kill-server")


def prompt_line(screen):
    # capture-pane drops trailing blanks: an empty prompt reads "(qemu)".
    lines = [line.rstrip() for line in screen.splitlines() if line.startswith("(qemu)")]
    return lines[-1] if lines else None


def toolbar_percent(screen):
    match = re.search(r"^virtio0 .*?\s(\d+)% ", screen, re.M)
    return int(match.group(1)) if match else None


def test_console_in_a_real_terminal(tmp_path):
    term = Tmux([sys.executable, "-m", "monitor", "--demo", str(tmp_path / "demo")],
                {"XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONPATH": ROOT, "TERM": "xterm-256color"})
    try:
        term.wait(lambda s: prompt_line(s) == "(qemu)", "the prompt")
        term.keys("block_s", "Tab")
        term.wait(lambda s: prompt_line(s) == "(qemu) block_stream", "command completion")
        term.keys(" virt", "Tab")
        term.wait(lambda s: prompt_line(s) == "(qemu) block_stream virtio0", "device completion")
        term.keys(" 4M A", "Enter")
        term.keys("info bloc")
        first = term.wait(toolbar_percent, "the job in the toolbar")
        term.wait(lambda s: (toolbar_percent(s) or -1) > first, "the toolbar progress to move")
        screen = term.wait(lambda s: "BLOCK_JOB_COMPLETED" in s and s, "the completion event")
        assert '"device": "virtio0"' in screen
        assert prompt_line(term.screen()) == "(qemu) info bloc"
        lines = term.screen().splitlines()
        event_row = max(i for i, line in enumerate(lines) if line.startswith("BLOCK_JOB_COMPLETED"))
        prompt_row = max(i for i, line in enumerate(lines) if line.startswith("(qemu) info bloc"))
        assert event_row < prompt_row
        term.keys("C-u", "C-d")
        term.wait(lambda s: term.dead(), "blockmon to leave on Ctrl-D")
    finally:
        term.close()
    history = (tmp_path / "state" / "blockmon" / "history").read_text()
    assert "+block_stream virtio0 4M A" in history
