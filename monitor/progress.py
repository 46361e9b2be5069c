"""One progress line per block job, rendered with rich; shared by the toolbar and ``block_job_wait``.

Jobs are read as QMP ``query-block-jobs`` dicts (the core's public shape).  A
``ThroughputMeter`` turns successive offsets into bytes/s and an ETA; it takes a
clock so tests drive it without sleeping.
"""
import io
import time
from collections import deque
from typing import Dict, List, Optional

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

RATE_WINDOW = 3.0   # seconds of samples behind the throughput figure
BAR_WIDTH = 24
SHORT_BAR_WIDTH = 10
MIN_BAR_WIDTH = 6
# Cells of job_row: device, bar, percent, bytes, rate, ETA, limit, state.  A job must
# stay on one line (a wrapped toolbar is unreadable): when it does not fit, the bar
# shrinks to SHORT_BAR_WIDTH, then these cells go (least useful first), then the
# bar shrinks further and finally goes.
BAR = 1
DROP_ORDER = (6, 5, 4, 3)
# Widths the changing cells are fitted at, at least, so that columns do not come and
# go as the figures change ("160.0 MiB/256.0 MiB", "23.4 MiB/s", "ETA 0:00:04", ...).
STEADY_WIDTHS = {3: 19, 4: 11, 5: 11, 6: 16}


def format_bytes(count: float) -> str:
    """Binary units as QEMU and qemu-img print them: 512 B, 64 KiB, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return ("%d %s" % (count, unit)) if unit == "B" else ("%.1f %s" % (count, unit))
        count /= 1024.0
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return "%d:%02d:%02d" % (hours, rest // 60, rest % 60)


class ThroughputMeter:
    """Bytes per second of each job over the last RATE_WINDOW seconds: of its progress
    (``offset``, which counts skipped ranges, as QEMU's) and of the bytes it copied."""

    def __init__(self, clock=time.monotonic, window: float = RATE_WINDOW):
        self._clock = clock
        self._window = window
        self._samples: Dict[str, deque] = {}

    def observe(self, job_id: str, offset: int, copied: Optional[int] = None) -> Optional[float]:
        """Record ``offset`` (and ``copied``) now; return the progress rate, or None until
        two samples span some time."""
        now = self._clock()
        samples = self._samples.setdefault(job_id, deque())
        if samples and offset < samples[-1][1]:
            samples.clear()        # a new job reused the id
        samples.append((now, offset, copied))
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        return self._rate(samples, 1)

    def copied_rate(self, job_id: str) -> Optional[float]:
        """The rate of copied bytes over the same samples; None without copied counts."""
        samples = self._samples.get(job_id)
        if not samples or samples[0][2] is None or samples[-1][2] is None:
            return None
        return self._rate(samples, 2)

    @staticmethod
    def _rate(samples, field: int) -> Optional[float]:
        first, last = samples[0], samples[-1]
        if last[0] - first[0] <= 0:
            return None
        return (last[field] - first[field]) / (last[0] - first[0])

    def forget(self, job_id: str) -> None:
        """Drop a job's samples (it stopped moving: its next figure starts afresh)."""
        self._samples.pop(job_id, None)

    def forget_except(self, job_ids) -> None:
        for job_id in list(self._samples):
            if job_id not in job_ids:
                del self._samples[job_id]


def with_copied(core, infos: List[dict]) -> List[dict]:
    """``query-block-jobs`` entries with each job's ``copied`` byte count added (not part
    of QMP's BlockJobInfo: the monitor reads it from the core's job objects)."""
    jobs = getattr(core, "jobs", None)
    if not callable(jobs):
        return infos
    copied = {job.id: job.copied for job in jobs() if hasattr(job, "copied")}
    return [dict(info, copied=copied[info["device"]]) if info.get("device") in copied else info
            for info in infos]


def job_state(info: dict) -> str:
    """The word shown after the bar: error, paused, ready, or the QEMU status."""
    if info.get("error") or info.get("io-status", "ok") != "ok":
        return "error: %s" % info.get("error", info.get("io-status"))
    if info.get("paused") or info.get("status") == "paused":
        return "paused"
    return info.get("status", "running")


def job_row(info: dict, rate: Optional[float], bar_width: int = BAR_WIDTH,
            copy_rate: Optional[float] = None) -> List:
    """The cells of one job's line: device, bar, percent, bytes, rate, ETA, limit, state.

    Percent and bytes are progress as QEMU counts it (skipped ranges included); the rate
    shown is of bytes really copied when known (``copy_rate``), the figure the speed limit
    beside it governs; the ETA comes from the progress ``rate``."""
    total, done = info.get("len", 0), info.get("offset", 0)
    fraction = done / total if total else 0.0
    state = job_state(info)
    if rate and rate > 0 and total > done and state == "running":
        eta = "ETA " + format_duration((total - done) / rate)
    else:
        eta = "ETA -:--:--"
    speed = info.get("speed", 0)
    style = "red" if state.startswith("error") else ("yellow" if state == "paused" else "green")
    return [
        Text(info.get("device", "?"), style="bold cyan"),
        ProgressBar(total=max(total, 1), completed=done if total else 0, width=bar_width,
                    complete_style=style, finished_style=style),
        Text("%3d%%" % int(fraction * 100)),
        Text("%s/%s" % (format_bytes(done), format_bytes(total))),
        Text(_rate_text(copy_rate if copy_rate is not None else rate)),
        Text(eta),
        Text("limit " + (format_bytes(speed) + "/s" if speed else "none"), style="dim"),
        Text(state, style=style),
    ]


def _rate_text(rate: Optional[float]) -> str:
    return (format_bytes(rate) + "/s") if rate is not None else "-- B/s"


def _cell_width(cell) -> int:
    return cell.width if isinstance(cell, ProgressBar) else cell.cell_len


def fitting_columns(rows: List[List], width: Optional[int]) -> tuple:
    """(kept cell indexes, bar width) so that every row fits in ``width`` cells."""
    kept = list(range(len(rows[0]))) if rows else []
    if width is None or not rows:
        return kept, BAR_WIDTH

    def needed(columns):
        others = [max([STEADY_WIDTHS.get(i, 0)] + [_cell_width(row[i]) for row in rows])
                  for i in columns if i != BAR]
        return sum(others) + len(columns) - 1       # one space between columns

    for index in DROP_ORDER:
        if needed(kept) + SHORT_BAR_WIDTH <= width:
            break
        kept.remove(index)
    room = width - needed(kept)
    if room >= MIN_BAR_WIDTH:
        return kept, min(room, BAR_WIDTH)
    kept.remove(BAR)
    return kept, BAR_WIDTH


def job_rate(info: dict, meter: ThroughputMeter) -> Optional[float]:
    """The job's throughput, or None while it does not run (paused, error): a paused
    job shows no figure at once rather than one fading over RATE_WINDOW, and after
    it resumes the paused time does not drag its figure down."""
    job_id = info.get("device", "?")
    if job_state(info) != "running":
        meter.forget(job_id)
        return None
    return meter.observe(job_id, info.get("offset", 0), info.get("copied"))


def jobs_table(infos: List[dict], meter: ThroughputMeter, width: Optional[int] = None) -> Table:
    """A grid with one row per job, columns aligned across jobs, fitted into ``width`` cells."""
    rows = []
    for info in infos:
        rate = job_rate(info, meter)
        copy_rate = meter.copied_rate(info.get("device", "?")) if rate is not None else None
        rows.append(job_row(info, rate, copy_rate=copy_rate))
    meter.forget_except({info.get("device") for info in infos})
    kept, bar_width = fitting_columns(rows, width)
    grid = Table.grid(padding=(0, 1))
    for _ in kept:
        grid.add_column(no_wrap=True)
    for row in rows:
        row[BAR].width = bar_width
        grid.add_row(*[row[i] for i in kept])
    return grid


def render_ansi(renderable, width: int) -> str:
    """Render to a string with ANSI colour codes, without a trailing newline."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="256", width=max(width, 20),
                      legacy_windows=False, soft_wrap=False)
    console.print(renderable, end="")
    return buffer.getvalue().rstrip("\n")


def waiting_view(infos: List[dict], meter: ThroughputMeter, job_id: Optional[str],
                 width: Optional[int] = None):
    """What ``block_job_wait`` draws: a title and the jobs it waits for, fitted into ``width``."""
    title = Text("waiting for %s (Ctrl-C stops waiting; jobs keep running)"
                 % ("job " + job_id if job_id else "all jobs"), style="dim")
    return Group(title, jobs_table(infos, meter, width))
