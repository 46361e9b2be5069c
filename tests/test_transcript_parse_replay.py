"""Replays the transcript's HMP lines whose answer does not depend on block state.

Help texts and parse errors come from the table and the parser alone, so every
such exchange in tests/data/qemu-7.2-transcript.txt must match byte for
byte (CRLF shown as LF there).  The one line we answer differently on purpose is
``block_stream virtio0 A.qcow2`` (issue 4: a non-size second word is the base).
"""
import pytest

from commands.hmp import HmpInterpreter
from conftest import TRANSCRIPT
from fake_core import FakeCore

DELIBERATELY_DIFFERENT = {"block_stream virtio0 A.qcow2"}


def exchanges():
    """(command, answer) for every '(qemu) ' line followed by its answer lines."""
    lines = open(TRANSCRIPT, encoding="utf-8").read().splitlines()
    found = []
    for index, line in enumerate(lines):
        if not line.startswith("(qemu) "):
            continue
        answer = []
        for following in lines[index + 1:]:
            if following.startswith(("(qemu) ", "  ", "###", "QMP", "$ ", "====")) or not following:
                break
            answer.append(following + "\n")
        found.append((line[len("(qemu) "):], "".join(answer)))
    return found


def state_free(command, answer):
    return (command.startswith("help ") or answer.startswith("invalid size")
            or ": block device name expected" in answer)


CASES = [(c, a) for c, a in exchanges() if state_free(c, a) and c not in DELIBERATELY_DIFFERENT]


def test_transcript_was_found():
    assert len(CASES) >= 13


@pytest.mark.parametrize("command, answer", CASES, ids=[c for c, _a in CASES])
def test_replay(command, answer):
    core = FakeCore()
    assert HmpInterpreter(core).run_line(command).output == answer
    assert core.calls == []
