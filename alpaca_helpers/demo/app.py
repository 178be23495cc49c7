"""Notebook 05's playground: an instruction, the decoding sliders, the watermark toggle, the model picker, and a
Generate button that runs the demo's policy (`DemoApp.answer`).

    app = DemoApp(ContentFilter("offline"), instruction="What is an alpaca?", models_root="runs")
    display(app.view)
    app.press()                                # what a click does, for papermill and the tests
    app.last_answers["base: SmolLM2-135M-Instruct"]["text"]

For each model to run (the picked one, or base and picked side by side) the content filter checks the instruction
first: a blocked one never reaches the model. The answer is generated as a stream, but only its progress is shown
until the filter has checked it too; a blocked answer is replaced by a refusal naming the categories. Under an
answer that is shown goes the watermark detector's verdict (always with the key, so that with the watermark off
one sees what unmarked text scores).
"""

from __future__ import annotations

import html
import os
from typing import Any

import ipywidgets as widgets

from .content_filter import ContentFilter, screen
from .decoding import Decoding
from .generate import BASE_MODEL, generate_stream, load_model, model_choices
from .watermark import Watermark, detect, verdict_text

EXAMPLES = {  # the prompts of the Alpaca announcement
    "alpaca vs llama": "What is an alpaca? How is it different from a llama?",
    "congratulate admits": "Write an e-mail to congratulate new Stanford admits and mention that you are "
                           "excited about meeting all of them in person.",
    "capital of Tanzania": "What is the capital of Tanzania?",
    "42 is the best seed": "Write a well-thought out abstract for a machine learning paper that proves that 42 "
                           "is the optimal seed for training neural networks.",
}
WRITING = "(writing: {n} characters, shown once the content filter has checked them)"


def answer_panel(label: str) -> widgets.VBox:
    """One model's panel: its label, the answer and the watermark verdict (set with `show`)."""
    return widgets.VBox([widgets.HTML(f"<b>{html.escape(label)}</b>"), widgets.HTML(), widgets.HTML()],
                        layout=widgets.Layout(width="49%"))


def show(panel: widgets.VBox, text: str, verdict: str = "") -> None:
    """Put `text` and `verdict` into `panel` (the classes are what the browser test looks for)."""
    panel.children[1].value = f"<pre class='alpaca-answer' style='white-space:pre-wrap'>{html.escape(text)}</pre>"
    panel.children[2].value = f"<i class='alpaca-verdict'>{html.escape(verdict)}</i>"


def _status(text: str, style: str = "") -> str:
    return f"<span class='alpaca-status'{f' style={style!r}' if style else ''}>{html.escape(text)}</span>"


class DemoApp:
    """The playground's widgets and the Generate button's handler. `decoding` sets the sliders' starting values;
    `watermark` is the key and strength the toggle turns on, and the detector's key; `models_root` is where the
    picker looks for fine-tuned folders (default `runs/`). `last_answers` maps each model's label to what its
    last press produced: {"text", "z", "watermarked", "verdict"}, or {"text": "", "blocked", "categories",
    "shown"} when the filter blocked it."""

    def __init__(self, content_filter: ContentFilter, *, instruction: str = "",
                 models_root: str | os.PathLike | None = None, decoding: Decoding = Decoding(),
                 watermark: Watermark = Watermark()) -> None:
        self.content_filter, self.watermark = content_filter, watermark
        wide = widgets.Layout(width="95%")
        self.instruction_box = widgets.Textarea(value=instruction, description="Instruction", layout=wide,
                                                placeholder="Enter your instruction and press Generate")
        self.input_box = widgets.Textarea(description="Input", layout=wide,
                                          placeholder="optional: context for the instruction")
        self.model_picker = widgets.Dropdown(options=model_choices(models_root), description="Model",
                                             layout=widgets.Layout(width="60%"))
        self.side_by_side = widgets.Checkbox(value=len(self.model_picker.options) > 1,
                                             description="side by side: base vs picked model")
        self.watermark_toggle = widgets.Checkbox(value=True, description="watermark the answer")
        self.sliders = _sliders(decoding)
        self.example_buttons = [widgets.Button(description=name, tooltip=text) for name, text in EXAMPLES.items()]
        for button in self.example_buttons:
            button.on_click(self._use_example)
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.generate_button.on_click(lambda _button: self.press())
        self.status = widgets.HTML()
        self.answers = widgets.HBox()
        self.last_answers: dict[str, dict[str, Any]] = {}
        sliders = list(self.sliders.values())
        controls = widgets.VBox([
            self.instruction_box, self.input_box, widgets.HBox(self.example_buttons),
            widgets.HBox([widgets.VBox(sliders[:4]), widgets.VBox(sliders[4:])]),
            widgets.HBox([self.model_picker, self.side_by_side]),
            widgets.HBox([self.watermark_toggle, self.generate_button, self.status])])
        self.view = widgets.VBox([controls, self.answers])

    def decoding(self) -> Decoding:
        """The sliders' settings, with the watermark when the toggle is on."""
        return Decoding(**{name: slider.value for name, slider in self.sliders.items()},
                        watermark=self.watermark if self.watermark_toggle.value else None)

    def press(self) -> None:
        """What a click on Generate does: `generate` with the button off meanwhile; an error shows in the status
        line (a button has no cell to show the traceback in) and is raised."""
        self.generate_button.disabled = True
        try:
            self.generate()
        except Exception as exc:
            self.status.value = _status(f"error: {exc!r}", "color:#b00")
            raise
        finally:
            self.generate_button.disabled = False

    def generate(self) -> None:
        """Answer with the picked model, or with base and picked side by side, one panel each."""
        labels = {value: label for label, value in self.model_picker.options}
        picked = self.model_picker.value
        paths = [BASE_MODEL, picked] if self.side_by_side.value and picked != BASE_MODEL else [picked]
        self.answers.children = [answer_panel(labels[p]) for p in paths]
        decoding = self.decoding()
        for path, panel in zip(paths, self.answers.children):
            self.status.value = _status(f"generating with {labels[path]}...")
            self.last_answers[labels[path]] = self.answer(panel, path, decoding)
        self.status.value = _status("done")

    def answer(self, panel: widgets.VBox, path: str, decoding: Decoding) -> dict[str, Any]:
        """One model's answer in `panel`, screened by the content filter, then the watermark detector's verdict."""
        model, tokenizer = load_model(path)
        screened = screen(self.content_filter, self.instruction_box.value, self.input_box.value,
                          lambda: self._write_hidden(panel, model, tokenizer, decoding))
        if screened.blocked:
            categories = screened.verdict.categories
            show(panel, screened.shown, f"blocked {screened.blocked}: {', '.join(categories)}")
            return {"text": "", "blocked": screened.blocked, "categories": categories, "shown": screened.shown}
        found = detect(screened.shown, tokenizer, self.watermark)
        verdict = verdict_text(found)  # below MIN_WATERMARK_TOKENS an unflagged answer is "too short"
        show(panel, screened.shown or "(the model ended its answer at once)", f"watermark check: {verdict}")
        return {"text": screened.shown, "z": found.z, "watermarked": decoding.watermark is not None,
                "verdict": verdict}

    def _write_hidden(self, panel: widgets.VBox, model: Any, tokenizer: Any, decoding: Decoding) -> str:
        """Generate the answer as a stream, showing only its progress: the filter checks it before it is shown."""
        text = ""
        for piece in generate_stream(model, tokenizer, self.instruction_box.value, self.input_box.value,
                                     decoding=decoding):
            text += piece
            show(panel, WRITING.format(n=len(text)))
        return text

    def _use_example(self, button: widgets.Button) -> None:
        self.instruction_box.value, self.input_box.value = EXAMPLES[button.description], ""


def _sliders(start: Decoding) -> dict[str, widgets.Widget]:
    """The decoding sliders, named as `Decoding`'s fields, starting at `start`'s values (the seed box always
    seeds: 0 when `start` has none)."""
    return {
        "temperature": widgets.FloatSlider(value=start.temperature, min=0, max=2, step=0.05,
                                           description="temperature"),
        "top_p": widgets.FloatSlider(value=start.top_p, min=0.05, max=1, step=0.05, description="top_p"),
        "top_k": widgets.IntSlider(value=start.top_k, min=0, max=200, description="top_k"),
        "max_new_tokens": widgets.IntSlider(value=start.max_new_tokens, min=1, max=512, description="max tokens"),
        "num_beams": widgets.IntSlider(value=start.num_beams, min=1, max=4, description="beams"),
        "repetition_penalty": widgets.FloatSlider(value=start.repetition_penalty, min=1, max=2, step=0.05,
                                                  description="rep. penalty"),
        "seed": widgets.IntText(value=start.seed if start.seed is not None else 0, description="seed"),
    }
