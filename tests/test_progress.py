"""Long steps report progress in a log too: where output is not a terminal the bar prints plain lines."""

from __future__ import annotations

import io

from rich.console import Console

import daonet.measure as measure


def _run(enabled: bool, monkeypatch) -> str:
    monkeypatch.setattr(measure, "LOG_EVERY_S", 0.0)
    out = io.StringIO()
    bar = measure.make_progress(enabled=enabled, console=Console(file=out, force_terminal=False, width=200))
    with bar:
        task = bar.add_task("decoder conv", total=3, status="")
        for epoch in range(1, 4):
            bar.update(task, advance=1, status=f"epoch {epoch} val 0.5{epoch}")
    return out.getvalue()


def test_progress_prints_lines_where_output_is_not_a_terminal(monkeypatch):
    text = _run(True, monkeypatch)
    assert "decoder conv: 1/3 epoch 1 val 0.51" in text and "decoder conv: 3/3 epoch 3 val 0.53" in text


def test_a_disabled_bar_prints_nothing(monkeypatch):
    assert _run(False, monkeypatch) == ""
