"""The blind rating widget of notebook 06: one item at a time, answers A and B, three buttons, a counter."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from .votes import VoteStore

_BOX = ("border:1px solid #ccc;border-radius:6px;padding:8px;margin:4px 0;white-space:pre-wrap;"
        "font-family:system-ui,sans-serif;font-size:14px")


def _block(title: str, text: str) -> str:
    return f"<div style='{_BOX}'><b>{html.escape(title)}</b><br>{html.escape(text)}</div>"


class RatingWidget:
    """Shows unrated pairs one by one; every click is appended to the rater's CSV at once.

    Reopening the notebook with the same CSV resumes at the next unrated item. `pairs` are the visible
    records of `make_blind_pairs` (the key is never shown).
    """

    def __init__(self, pairs: Sequence[Mapping[str, Any]], store: VoteStore) -> None:
        self.pairs = list(pairs)
        self.store = store
        self._ids = [p["id"] for p in self.pairs]
        self.header = widgets.HTML()
        self.body = widgets.HTML()
        self.buttons = {choice: widgets.Button(description=label, button_style=style, layout={"width": "160px"})
                        for choice, label, style in (("A", "A is better", "info"), ("tie", "Tie", ""),
                                                     ("B", "B is better", "info"))}
        for choice, button in self.buttons.items():
            button.on_click(lambda _b, c=choice: self.vote(c))
        self.view = widgets.VBox([self.header, self.body, widgets.HBox(list(self.buttons.values()))])
        self.current: str | None = None
        self._show_next()

    @property
    def progress(self) -> tuple[int, int]:
        """(rated, total) for this rater."""
        rated = self.store.votes()
        return sum(i in rated for i in self._ids), len(self._ids)

    def vote(self, choice: str) -> None:
        """Record `choice` ("A", "B" or "tie") for the item on screen and show the next one."""
        if self.current is None:
            return
        self.store.add(self.current, choice)
        self._show_next()

    def _show_next(self) -> None:
        self.current = self.store.next_item(self._ids)
        done, total = self.progress
        self.header.value = (f"<b>Rater:</b> {html.escape(self.store.rater)} &nbsp; <b>Progress:</b> {done} / {total}"
                             f" &nbsp; <small>(votes saved to {html.escape(str(self.store.path))})</small>")
        for button in self.buttons.values():
            button.disabled = self.current is None
        if self.current is None:
            self.body.value = "<p>All items are rated. Thank you! Run the tally cells below.</p>"
            return
        item = self.pairs[self._ids.index(self.current)]
        request = item["instruction"] + (f"\n\nInput:\n{item['input']}" if item.get("input") else "")
        self.body.value = (_block(f"Request ({item.get('category', '')})", request)
                           + _block("Answer A", item["answer_a"]) + _block("Answer B", item["answer_b"]))
