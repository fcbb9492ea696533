"""Log lines packed as runs (pb.LogRun), the form they travel in from agent to CLI.

Lines an agent read together from one pipe share every field but their text, and
their seqs follow each other: a run carries those fields once and the texts as a
list, so that a line costs a string on the wire and no Python object of its own
on the way (a LogLine a line cost the agent, the scheduler and the CLI more than
all the rest of the way). A notice (seq 0) is a run of one text.

    runs = runs_of_lines(batch.lines)      # from a server that predates runs
    lines = lines_of_runs(runs)            # for a reader that wants lines
    for part in run_batches(runs): ...     # as LogBatch messages of a bounded size

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import groupby
from operator import attrgetter

from paas.common.logbatch import BATCH_BYTES, BATCH_LINES
from paas.proto import paas_pb2 as pb

_SHARED = attrgetter("timestamp", "app", "instance", "stream", "node", "run")


def size(runs: Iterable[pb.LogRun]) -> int:
    """How many lines `runs` hold."""
    return sum(len(run.texts) for run in runs)


def last_seq(run: pb.LogRun) -> int:
    """The seq of the run's last line (0 for a notice)."""
    return run.first_seq + len(run.texts) - 1 if run.first_seq else 0


def tail(run: pb.LogRun, start: int) -> pb.LogRun:
    """`run` without its first `start` lines (a copy; `run` is left as it is)."""
    return pb.LogRun(
        timestamp=run.timestamp,
        app=run.app,
        instance=run.instance,
        stream=run.stream,
        node=run.node,
        run=run.run,
        first_seq=run.first_seq + start if run.first_seq else 0,
        texts=run.texts[start:],
        continued=[index - start for index in run.continued if index >= start],
    )


def past(run: pb.LogRun, seq: int) -> pb.LogRun | None:
    """The lines of `run` with seqs above `seq`: `run` itself if all are (a notice
    always is), a tail of it, or None."""
    first = run.first_seq
    if not first or first > seq:
        return run
    if last_seq(run) <= seq:
        return None
    return tail(run, seq + 1 - first)


def last_lines(runs: Sequence[pb.LogRun], count: int) -> list[pb.LogRun]:
    """The last `count` lines of `runs`, as runs (the first of them cut if need be)."""
    kept: list[pb.LogRun] = []
    left = count
    for run in reversed(runs):
        if left <= 0:
            break
        lines = len(run.texts)
        kept.append(run if lines <= left else tail(run, lines - left))
        left -= lines
    kept.reverse()
    return kept


def runs_of_lines(lines: Iterable[pb.LogLine]) -> list[pb.LogRun]:
    """`lines` packed: each stretch of lines that share all but text, with seqs that
    follow each other, one run (a notice one alone)."""
    runs: list[pb.LogRun] = []
    for shared, group in groupby(lines, key=_SHARED):
        stamp, app, instance, stream, node, run_number = shared
        current: pb.LogRun | None = None
        for line in group:
            if current is None or not line.seq or line.seq != last_seq(current) + 1:
                current = pb.LogRun(
                    timestamp=stamp,
                    app=app,
                    instance=instance,
                    stream=stream,
                    node=node,
                    run=run_number,
                    first_seq=line.seq,
                )
                runs.append(current)
            if line.continued:
                current.continued.append(len(current.texts))
            current.texts.append(line.text)
            if not line.seq:
                current = None  # a notice stays alone
    return runs


def lines_of_runs(runs: Iterable[pb.LogRun]) -> list[pb.LogLine]:
    """Every line of `runs`, as LogLines."""
    lines: list[pb.LogLine] = []
    for run in runs:
        continued = set(run.continued)
        for index, text in enumerate(run.texts):
            lines.append(
                pb.LogLine(
                    timestamp=run.timestamp,
                    app=run.app,
                    instance=run.instance,
                    stream=run.stream,
                    node=run.node,
                    seq=run.first_seq + index if run.first_seq else 0,
                    text=text,
                    continued=index in continued,
                    run=run.run,
                )
            )
    return lines


def runs_of(batch: pb.LogBatch) -> list[pb.LogRun]:
    """The runs of `batch`, whichever form it came in (a server that predates runs
    sends lines)."""
    runs = list(batch.runs)
    if batch.lines:
        runs += runs_of_lines(batch.lines)
    return runs


def run_batches(
    runs: Sequence[pb.LogRun], max_lines: int = BATCH_LINES, max_bytes: int = BATCH_BYTES
) -> Iterator[list[pb.LogRun]]:
    """`runs` in order, in parts of about `max_lines` lines and `max_bytes` of text at
    most (a run is not cut: an agent's runs are at most a batch already)."""
    part: list[pb.LogRun] = []
    lines = text = 0
    for run in runs:
        run_lines = len(run.texts)
        run_text = sum(map(len, run.texts))
        if part and (lines + run_lines > max_lines or text + run_text > max_bytes):
            yield part
            part, lines, text = [], 0, 0
        part.append(run)
        lines += run_lines
        text += run_text
    if part:
        yield part
