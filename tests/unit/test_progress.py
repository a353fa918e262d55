"""Progress in a log: a line every 10 %, since a bar redrawn with carriage returns shows only its first state."""

from __future__ import annotations

from dealrec_tasks.progress import LineProgress, progress_bar


def test_a_log_gets_a_line_per_tenth_and_the_end(capsys, monkeypatch):
    monkeypatch.setenv("DEALREC_PROGRESS", "1")
    bar = progress_bar(200, desc="effort 0/1", unit="sample")  # stderr is captured: not a terminal
    assert isinstance(bar, LineProgress)
    for _ in range(50):
        bar.update(4)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10 and lines[0].startswith("effort 0/1: 20/200 sample (10 %")
    assert lines[-1].startswith("effort 0/1: 200/200 sample (100 %")


def test_uneven_steps_and_silence(capsys, monkeypatch):
    monkeypatch.setenv("DEALREC_PROGRESS", "1")
    bar = progress_bar(10, desc="x")
    bar.update(7)  # jumps past several tenths: one line
    bar.update(3)
    shown = [line.split(" (")[0] for line in capsys.readouterr().err.strip().splitlines()]
    assert shown == ["x: 7/10 it", "x: 10/10 it"]
    monkeypatch.setenv("DEALREC_PROGRESS", "0")
    quiet = progress_bar(10, desc="y")
    quiet.update(10)
    quiet.close()
    assert capsys.readouterr().err == ""
