"""Named presets: one frozen dataclass a method, one registry line a preset.

    from transformers_qf.editing.presets import PRESETS, DEFAULT_PRESET, get_preset
    preset = get_preset("qf-fast")
    preset.config_for(num_layers=30)          # its EditConfig, layers placed in a 30-layer model

`qf learn`, `qf chat`, `qf bench` and `teach.learner.make_learner` all take a preset name. Each preset
carries one line of what it measured (results/bench/benchmark.md: 100 invented facts learned one after
another, scored by free greedy generation, on qwen2.5-coder-1.5b-instruct in bfloat16 on the CPU).

Layers are those measured on that model's 28 layers. On a model of another depth (`layers_for`) a
single-layer preset edits the last layer: on SmolLM2-135M (30 layers) a fact taught at layer 23 or 25
was not answered closed book, at layer 29 it was (`qf learn`, "The capital of Zubrovia is Pelmora.",
2026-12-07), as the last layer held 7 of the 8 walkthrough steps on the bundled model
(results/qf/qf_sweep.md). A block of layers is placed at the same relative depth: its first layer
scaled, its length kept (clipped to the model's last layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers_qf.core.prompting import PromptError
from transformers_qf.editing.editor import PAPER, RECOMMENDED, EditConfig
from transformers_qf.editing.methods import FineTune, InContext, QFEdit

REFERENCE_DEPTH = 28  # qwen2.5-coder-1.5b-instruct, where every preset was measured
SOURCE = "results/bench/benchmark.md, 100 facts in sequence, qwen2.5-coder-1.5b-instruct bf16, CPU"


@dataclass(frozen=True)
class FineTuneConfig:
    """FT-L (ROME's baseline): Adam on one down_proj, maximising log p(answer) closed-book."""

    layers: tuple[int, ...] = (23,)
    steps: int = 25
    lr: float = 5e-4
    norm_constraint: float | None = None


@dataclass(frozen=True)
class Preset:
    """A named way to teach a fact.

    method: "qf" (editing.Editor, or the row-keeping Learner where it can), "ft" or "in-context";
    config: its EditConfig (qf) or FineTuneConfig (ft), None for in-context; what: one line on what it
    does; cost, scores: measured, as in `SOURCE`; run: the name of the measured run in that report.
    """

    name: str
    method: str
    what: str
    cost: str
    scores: str
    run: str
    config: EditConfig | FineTuneConfig | None = None

    @property
    def layers(self) -> tuple[int, ...]:
        return () if self.config is None else tuple(self.config.layers)

    def layers_for(self, num_layers: int) -> tuple[int, ...]:
        """The preset's layers placed in a model of `num_layers` layers (see the module doc)."""
        if not self.layers or num_layers == REFERENCE_DEPTH:
            return self.layers
        if len(self.layers) == 1:
            return (num_layers - 1,)
        scale = (num_layers - 1) / (REFERENCE_DEPTH - 1)
        first = round(self.layers[0] * scale)
        return tuple(sorted({min(first + i, num_layers - 1) for i in range(len(self.layers))}))

    def config_for(self, num_layers: int | None = None, layer: int | None = None):
        """The config with the layers of a `num_layers`-layer model, or the one `layer` given (single-layer presets)."""
        if self.config is None:
            return None
        layers = self.layers_for(num_layers) if num_layers is not None else self.layers
        if layer is not None:
            if len(self.layers) > 1:
                raise PromptError(f"preset {self.name} edits layers {','.join(map(str, self.layers))} together: "
                                  "leave out --layer, or pick a single-layer preset")
            layers = (layer,)
        return _replace_layers(self.config, layers)

    @property
    def uses_covariance(self) -> bool:
        return isinstance(self.config, EditConfig) and self.config.covariance

    def help_line(self) -> str:
        return f"{self.name}: {self.what} {self.cost}; {self.scores}"


def _replace_layers(config, layers: tuple[int, ...]):
    from dataclasses import replace

    return replace(config, layers=tuple(layers))


# The editor that keeps the model intact: ROME/MEMIT's form with QF's solve. The target is fitted by gradient at
# layer 8 on the question, the answer's copies of the subject and up to 5 rewordings by the model, spread over
# layers 4-8, every other row of those sequences held where it was.
# the fit stops once the answer's loss is below 0.05 (at most 60 steps), each layer's factor grows by the round's
# rows, the drift watch keeps 8 rows a context: 31 s an edit against 146 s for 60 full steps (1.00 / 0.67 / 1.00);
# Adam lr 0.5 reaches the stop in fewer steps (23 s) but broke 10 of 50 controls by 100 edits (docs/findings.md)
INTACT = EditConfig(layers=(4, 5, 6, 7, 8), positions="subject-copies", covariance=True, cov_corpus="generic+facts",
                    target="optimized", target_steps=60, target_wordings=5, keep_context=True, target_stop=0.05,
                    incremental=True, drift_rows=8)

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("paper", "qf", "QF as published: layer 23, the answer's rows, exact solve.",
           "1.5 s an edit", "efficacy 0.72, paraphrase 0.59, specificity 0.02, fluency +2.2%",
           "sequential100-qf-paper", PAPER),
    Preset("qf-fast", "qf", "QF at layer 23 on the rows that predict the answer's value, solved in the key "
           "covariance of generic text and real-entity answers (made once per model and layer, then cached).",
           "1.2 s an edit", "efficacy 0.69, paraphrase 0.56, specificity 0.64, fluency -2.6%",
           "sequential100-qf-covfacts-target", RECOMMENDED),
    Preset("intact", "qf", "Target fitted by gradient at layer 8, spread over layers 4-8 at the subject's rows, "
           "other rows held; the model stays intact.",
           "31 s an edit", "efficacy 1.00, paraphrase 0.74, specificity 0.96, fluency -1.4%",
           "sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1", INTACT),
    Preset("ft", "ft", "FT-L baseline: 25 Adam steps on layer 23's down_proj.",
           "17.8 s an edit", "efficacy 0.17, paraphrase 0.12, specificity 0.00, fluency +52.8%",
           "sequential100-ft", FineTuneConfig()),
    Preset("in-context", "in-context", "The fact in the system turn of every question (the ceiling; no weight changes).",
           "0 s an edit", "efficacy 0.95, paraphrase 0.97, specificity 1.00, fluency +0.0%",
           "sequential100-in-context"),
)}
# The best measured preset that is practical for a first `qf learn` on a CPU: seconds an edit and nothing to make
# first. qf-fast scores higher but its first edit makes the key covariance: `qf learn` took 1491 s, peak RSS 10.6 GB,
# on the bundled model in float32 on 2 CPU cores (results/perf/memory.md, 2026-12-07; cached afterwards). intact
# scores highest at 31 s an edit.
DEFAULT_PRESET = "paper"


def get_preset(name: str | None) -> Preset:
    """The preset named `name` (None: the default); a one-line PromptError for an unknown name."""
    name = DEFAULT_PRESET if name is None else name
    if name not in PRESETS:
        raise PromptError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def presets_help() -> str:
    """The presets for --help: one line each, measured cost and scores, and where they were measured."""
    lines = [p.help_line() for p in PRESETS.values()]
    return " | ".join(lines) + f" (measured: {SOURCE}). Default: {DEFAULT_PRESET}."


def build_method(preset: Preset, model, tokenizer, metrics=None, layers: tuple[int, ...] | None = None, label=None):
    """The benchmark's method object for `preset` (edit / system_for / reset / state_dict / load_state_dict).

    layers: the layers in this model (default: `layers_for` its depth); metrics: {layer: KeyMetric} for a
    covariance preset."""
    if preset.method == "in-context":
        return InContext()
    layers = layers if layers is not None else preset.layers_for(int(model.config.num_hidden_layers))
    if preset.method == "ft":
        cfg = preset.config
        return FineTune(model, tokenizer, layers[0], cfg.steps, cfg.lr, cfg.norm_constraint)
    config = _replace_layers(preset.config, layers)
    return QFEdit(model, tokenizer, config, metrics, label=label or ("qf-paper" if config == PAPER else "qf"))
