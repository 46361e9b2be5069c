"""Issue 4, acceptance 2: replay the QEMU 7.2 transcript against a real core.

Every ``(qemu) cmd`` and ``QMP> {...}`` of tests/data/qemu-7.2-transcript.txt
is parsed with its answer and run, in order, per session (s1..s4), against
``BlockCore`` on a private copy of the 256 MiB benchmark chain opened as QEMU's
``-drive if=none,id=virtio0``.  Texts are compared up to paths and node names:

- ``/images/sN/`` is our chain directory; ``../sN/`` is ``../<its name>/``;
- ``virtio0 (#blockNNN): /images/sN/X.qcow2`` names the node ``X`` (ours are
  derived from file names);
- ``Completed N of M bytes``: the offset is timing, M must be our chain's size;
- ``info block`` leaves out ``Removable device:`` (no hardware: documented);
- our ``Backing file:`` keeps the relative name stored in the image (QEMU
  shows the resolved path): a relative name is resolved before comparing.

While a job runs, the test holds the active image's lock, so the job is parked
before its next chunk (every image method and every stream chunk takes that lock)
and the transcript's "busy", set-speed and pause/resume exchanges meet a running
job however fast the machine is.  Where the transcript shows the job ending (a
BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED event or a poll seeing ``No active
jobs``), the test lets go and waits for the job, then checks those events.
"""
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from commands.core import BlockCore
from commands.devices import derived_node_name
from commands.errors import CommandError, qmp_error
from commands.hmp import HmpInterpreter
from conftest import TRANSCRIPT, run
from images.errors import BlockError

CHAIN_SIZE = 256 * 1024 * 1024
QEMU_SIZE = 2147483648
WAIT = 120     # seconds: a bound so that a stuck job fails the test instead of hanging it

# Deliberate differences (asserted in their own tests below, skipped in the replay):
SKIPPED = {
    # Ours: a second word that is not a size is the base (the seed's form), so this
    # starts a stream onto A instead of failing with "invalid size".
    "block_stream virtio0 A.qcow2",
    # Ours: node names come from file names and intermediate streaming by node name
    # works; '#block377' names C in QEMU's session.  See test_stream_by_node_name.
    "block_stream #block377",
}
_ITEM_START = ("(qemu) ", "QMP> ", "SESSION ", "$ ", "====")
_ANSWER_END = ("(qemu) ", "###", "QMP", "$ ", "====", "SESSION")


def ends_answer(line: str) -> bool:
    """Answers end at a blank line, a new item, or a two-space note ('  <no output>', '  [QMP event')."""
    return not line or line.startswith(_ANSWER_END) or (line.startswith("  ") and line[2] != " ")


@dataclass
class Item:
    kind: str                 # "hmp" or "qmp"
    command: str              # HMP line or the QMP request's JSON text
    answer: str               # HMP text ("\n" ends) or the QMP response's JSON text
    markers: List[str] = field(default_factory=list)   # indented lines that follow

    @property
    def ends_job(self) -> bool:
        return any('"BLOCK_JOB_COMPLETED"' in m or '"BLOCK_JOB_CANCELLED"' in m
                   or "-> No active jobs" in m for m in self.markers)

    @property
    def pauses_job(self) -> bool:
        """The transcript shows the job reaching 'paused' right after this command."""
        return self.command.startswith("block_job_pause") and any(
            e["data"]["status"] == "paused" for e in self.events(("JOB_STATUS_CHANGE",)))

    def events(self, names=("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")):
        found = []
        for marker in self.markers:
            if marker.lstrip().startswith("[QMP event"):
                event = json.loads(marker.split("] ", 1)[1])
                if event["event"] in names:
                    found.append(event)
        return found


def parse_sessions(text: str):
    """{session name: [Item, ...]} from the transcript."""
    sessions, items, lines = {}, None, text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("SESSION "):
            items = sessions.setdefault(line.split()[1], [])
        elif items is None:
            continue
        elif line.startswith("(qemu) "):
            answer = []
            for following in lines[index + 1:]:
                if ends_answer(following):
                    break
                answer.append(following + "\n")
            items.append(Item("hmp", line[len("(qemu) "):], "".join(answer)))
        elif line.startswith("QMP> "):
            reply = lines[index + 1]
            assert reply.startswith("QMP< "), reply
            items.append(Item("qmp", line[5:], reply[5:]))
        elif line.startswith("  ") and items:
            items[-1].markers.append(line)
    return sessions


def load_sessions():
    with open(TRANSCRIPT, encoding="utf-8") as handle:
        return parse_sessions(handle.read())


SESSIONS = load_sessions()


# -- normalisation ---------------------------------------------------------------------
class Paths:
    def __init__(self, chain_dir):
        self.chain_dir = chain_dir

    def command(self, text: str) -> str:
        text = re.sub(r"/images/s\d+/", self.chain_dir + "/", text)
        return re.sub(r"\.\./s\d+/", "../%s/" % os.path.basename(self.chain_dir), text)

    def expected(self, text: str) -> str:
        text = "".join(line for line in text.splitlines(True)
                       if not line.startswith("    Removable device:"))
        text = re.sub(r"\(#block\d+\): (/images/s\d+/([^ ]+)) ",
                      lambda m: "(%s): %s " % (derived_node_name(m.group(2)), m.group(1)), text)
        text = self.command(text)
        return re.sub(r"Completed \d+ of %d bytes" % QEMU_SIZE, "Completed N of SIZE bytes", text)

    def ours(self, text: str) -> str:
        def absolute(match):
            name = match.group(2)
            if not os.path.isabs(name):
                name = os.path.normpath(os.path.join(self.chain_dir, name))
            return match.group(1) + name + match.group(3)
        text = re.sub(r"(Backing file:     )(.+)( \(chain depth: \d+\))", absolute, text)
        return re.sub(r"Completed \d+ of %d bytes" % CHAIN_SIZE, "Completed N of SIZE bytes", text)


# -- the replay ------------------------------------------------------------------------
class Replay:
    def __init__(self, chain_dir):
        self.paths = Paths(chain_dir)
        self.core = BlockCore()
        self.core.add_drive("virtio0", os.path.join(chain_dir, "D.qcow2"), format="qcow2")
        self.hmp = HmpInterpreter(self.core)
        self.events = []
        self.core.events.subscribe(self.events.append)
        self.held: Optional[object] = None
        self.checked = 0

    # The active image's lock parks a running job (see the module docstring).
    def park(self):
        if self.held is not None and self.core.jobs():
            return
        self.release()
        self.held = self.core.active_image("virtio0").lock
        self.held.acquire()

    def release(self):
        if self.held is not None:
            self.held.release()
            self.held = None

    def hmp_line(self, item: Item):
        result = self.hmp.run_line(self.paths.command(item.command))
        if item.command in ("quit", "q"):
            assert result.quit and result.output == ""
            return
        assert self.paths.ours(result.output) == self.paths.expected(item.answer), item.command

    def qmp_request(self, item: Item):
        request = json.loads(self.paths.command(item.command))
        expected = json.loads(self.paths.command(item.answer))
        try:
            reply = {"return": self.core.execute(request["execute"], request.get("arguments"))}
        except (CommandError, BlockError) as err:
            reply = {"error": qmp_error(err)}
        if "error" in expected or expected["return"] in ({}, []):
            assert reply == expected, item.command
        elif request["execute"] == "query-block-jobs":
            assert [job_facts(j) for j in reply["return"]] == [job_facts(j) for j in expected["return"]]
        elif request["execute"] == "human-monitor-command":
            ours = reply["return"]
            assert "\r\n" in ours and "\n" not in ours.replace("\r\n", "")
            assert self.paths.ours(ours.replace("\r\n", "\n")) == \
                self.paths.expected(json.loads(item.answer)["return"].replace("\r\n", "\n"))
        elif request["execute"] == "query-block":
            assert [device_facts(d) for d in reply["return"]] == \
                [device_facts(d, self.paths.chain_dir) for d in expected["return"]]
        else:
            raise AssertionError("no comparison for %s" % item.command)

    def job_end(self, item: Item):
        self.release()
        assert self.core.wait_jobs(timeout=WAIT)
        ours = [e for e in self.events[self.checked:]
                if e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")]
        self.checked = len(self.events)
        assert [event_facts(e, CHAIN_SIZE) for e in ours] == \
            [event_facts(e, QEMU_SIZE) for e in item.events()], item.command

    def let_it_pause(self):
        """Let the parked job reach its pause point (it holds no image lock there), then park again."""
        self.release()
        deadline = time.monotonic() + WAIT
        while self.core.jobs()[0].status != "paused":
            assert time.monotonic() < deadline, "the job never paused"
            time.sleep(0.001)
        self.park()

    def play(self, items: List[Item]) -> int:
        played = 0
        for item in items:
            if item.command in SKIPPED:
                continue
            self.park()
            (self.hmp_line if item.kind == "hmp" else self.qmp_request)(item)
            played += 1
            if item.ends_job:
                self.job_end(item)
            elif item.pauses_job:
                self.let_it_pause()
        return played

    def close(self):
        self.release()
        self.core.shutdown()


def job_facts(job: dict) -> dict:
    """BlockJobInfo without what depends on timing or on the chain's size."""
    facts = {k: v for k, v in job.items() if k not in ("offset", "len", "busy")}
    facts["done"] = job["offset"] == job["len"]
    return facts


def device_facts(info: dict, chain_dir: Optional[str] = None) -> dict:
    inserted = info["inserted"]
    file = inserted["file"]
    if chain_dir is not None:
        file = re.sub(r"^/images/s\d+/", chain_dir + "/", file)
    return {"device": info["device"], "file": file, "ro": inserted["ro"], "drv": inserted["drv"],
            "depth": inserted["backing_file_depth"],
            "format": inserted["image"]["format"], "locked": info["locked"]}


def event_facts(event: dict, size: int) -> dict:
    data = dict(event["data"])
    # how far a cancelled job got is timing; whether a job got to the end is not
    data["done"] = data.pop("offset") == data["len"]
    data["len"] = "SIZE" if data["len"] == size else data["len"]
    return {"event": event["event"], "data": data}


# -- tests -----------------------------------------------------------------------------
def test_the_transcript_parses_into_four_sessions():
    assert sorted(SESSIONS) == ["s1", "s2", "s3", "s4"]
    s1 = [i.command for i in SESSIONS["s1"] if i.kind == "hmp"]
    assert s1[:3] == ["info block", "info block-jobs", "help block_stream"]
    assert "block_job_set_speed virtio0 4096B" in s1 and s1[-1] == "quit"
    speeds = [i for i in SESSIONS["s1"] if i.command == "block_job_set_speed virtio0 1.5M"]
    assert len(speeds) == 1 and speeds[0].answer == ""
    cancel = [i for i in SESSIONS["s1"] if i.command == "block_job_cancel virtio0" and i.ends_job]
    assert len(cancel) == 1 and cancel[0].events()[0]["event"] == "BLOCK_JOB_CANCELLED"


@pytest.mark.parametrize("name, minimum", [("s1", 70), ("s2", 4), ("s3", 6), ("s4", 14)])
def test_replay_session(name, minimum, chain_copy):
    replay = Replay(chain_copy)
    try:
        played = replay.play(SESSIONS[name])
    finally:
        replay.close()
    assert played >= minimum


def test_s1_set_speed_outputs_are_checked():
    """The units the transcript exercises reach the comparison (bare number = MiB, 0x10 = 16 MiB)."""
    pairs, items = [], SESSIONS["s1"]
    for item, following in zip(items, items[1:]):
        if item.command.startswith("block_job_set_speed virtio0 ") and item.answer == "" \
                and following.command == "info block-jobs":
            pairs.append((item.command.split()[-1],
                          int(re.search(r"speed limit (\d+)", following.answer).group(1))))
    assert ("10", 10485760) in pairs and ("512", 536870912) in pairs and ("0x10", 16777216) in pairs
    assert ("1k", 1024) in pairs and ("100B", 100) in pairs and ("1.5M", 1572864) in pairs
    assert len(pairs) >= 9


def test_seed_form_base_word_streams_onto_A(chain_copy, qemu_img):
    """QEMU: 'invalid size'.  Ours (documented): a non-size second word is the base."""
    replay = Replay(chain_copy)
    try:
        assert replay.hmp.run_line("block_stream virtio0 A.qcow2").output == ""
        assert replay.core.wait_jobs(timeout=WAIT)
        assert replay.hmp.run_line("info block").output == (
            "virtio0 (D): %s/D.qcow2 (qcow2)\n    Cache mode:       writeback\n"
            "    Backing file:     A.qcow2 (chain depth: 1)\n" % chain_copy)
    finally:
        replay.close()
    info = run(qemu_img, "info", os.path.join(chain_copy, "D.qcow2")).stdout
    assert "backing file: A.qcow2 (actual path: %s/A.qcow2)" % chain_copy in info


def test_stream_by_node_name(chain_copy, qemu_img):
    """QEMU: 'Invalid job ID '#block377''.  Ours: node names are words, and C streams B and A into C."""
    replay = Replay(chain_copy)
    try:
        assert replay.hmp.run_line("block_stream C").output == ""
        assert replay.core.wait_jobs(timeout=WAIT)
        assert replay.hmp.run_line("info blockmap virtio0").output.startswith("virtio0: [C] <- [D]\n")
    finally:
        replay.close()
    info = run(qemu_img, "info", os.path.join(chain_copy, "C.qcow2")).stdout
    assert "backing file" not in info
