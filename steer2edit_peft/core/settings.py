"""Every default of an edit, in one place: `edit_model`, the demo, the CLI and the sweep read DEFAULTS, so the
Python API and the command line make the same edit; a Steer2EditConfig built by hand takes its fields from PAPER.

It lives below every stage because the adapter config (tuner) reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

POSITIONS = ("predicting", "response", "decision")
KEY_DIRECTIONS = ("weight", "contrast", "selective")
# Selective keys: k = (A + SELECTIVE_DECISION_WEIGHT * C + ridge)^-1 (x_probe - x_reference), see solver.scores.
# The weight of over-refusal (firing on reference prompts) against KL (firing on reference answers), and the ridge
# as a share of the mean eigenvalue; both chosen on HarmBench tune / borderline tune data (BENCHMARKS.md).
SELECTIVE_DECISION_WEIGHT = 3.0
SELECTIVE_RIDGE = 0.1
# Selective keys fire at -SELECTIVE_THRESHOLD times their push (k . (x_probe - x_reference)) on the mean reference
# input: a prompt must move that share of the way from the reference towards the probe before the edit pushes it
# towards the behaviour, and prompts like the reference are pushed away from it. A rank-one edit has no bias, so
# the key carries this threshold. Chosen on the HarmBench tune half (BENCHMARKS.md, "A threshold in the key").
SELECTIVE_THRESHOLD = 0.2
# Behaviours that change every answer (a style, a stance), not the answers to one kind of prompt: there are no
# prompts to tell from the reference's, so their heads take contrast keys. Selective keys fire on what sets the
# probe's questions apart and broke plain facts in a concise edit ("The capital of France is 21").
EVERY_PROMPT_BEHAVIOURS = ("concise", "truthful")
# The built-in behaviours with held-out prompts to score an edit on (the demo, `eval`, `sweep`).
EVALUATED_BEHAVIOURS = ("refusal", "concise")
# Calibration and the steering match measure KL on every k-th reference answer, k = len // KL_ANSWERS (at least 1):
# from KL_ANSWERS to twice as many, an even spread; each measurement is a pass of the model over them, and a search
# takes four to six. At the default refusal edit, the two halves of the 368 default reference answers read KL 1.4%
# above and below the whole set's, under the search's own 2% tolerance (BENCHMARKS.md, "KL on an even spread").
KL_ANSWERS = 184
# Gates (EditSettings.gate_amount): the L2 penalty of each layer's fitted detector (a logistic regression on features
# scaled by the reference's spread), as in the measured gates of BENCHMARKS.md ("Detectors fitted on single tokens").
GATE_RIDGE = 1e-3
# The features are scaled by the reference's spread, floored at this share of its median: a coordinate that barely
# moves on the reference otherwise gets a weight of up to 2e5 (layer 24 of the embedded model), over the load bound
# and far past bfloat16's precision; floored, the largest is 80 and the detectors pass as many probe tokens.
GATE_SPREAD_FLOOR = 0.1
# The constant direction (c . x = 1 on the reference's tokens) is a ridge solve, its penalty this share of the mean
# second moment: the plain least-squares solution reaches entries of 900 along directions the reference barely
# spans, for a fit 10% closer (rms 0.016 against 0.018 at layer 24 of the embedded model).
GATE_CONSTANT_RIDGE = 1e-4
DTYPE_NAMES = ("auto", "bfloat16", "float32", "float16")  # "auto": core.models.fast_dtype


@dataclass(frozen=True)
class EditSettings:
    """How an edit is extracted, solved and calibrated.

    The paper's method: the elastic net ``lambda = sign(g) max(|g| - rho*alpha, 0) / (rho (1-alpha))`` over heads
    and neurons, with keys ``normalize(W_j^T v)`` (``key_direction="weight"``), means over the response tokens
    (``positions="predicting"``), on every layer. ``PAPER`` holds its published values.

    This project's refinements, measured in BENCHMARKS.md, are the defaults:
    - ``key_direction="selective"``: a head's key is the direction that best tells the probe's prompts from the
      reference prompts at the decision token per unit of firing on the reference, at its prompts and along its
      answers; heads are scored (and so chosen) by how well their key does that, not by g, and the heads chosen in
      one module then share one key solved over their inputs together (``solver.scores.joint_selective_key``).
      The key fires at -SELECTIVE_THRESHOLD times its push on the mean reference input, so the edit pushes prompts
      like the reference away from the behaviour and starts pushing towards it only past that share of the way to
      the probe's.
      ``"contrast"``, the earlier default, is the plain probe-minus-reference mean input, orthogonal to the
      reference mean; it is the default of behaviours that change every answer (``defaults_for``: concise,
      truthful).
    - ``input_positions="decision"``: components are scored and keys built from the inputs at the last prompt token,
      where the model decides how to answer; outputs (the steering vector) stay averaged over the response.
    - ``first_layer=None``: the upper 60% of the layers (``default_first_layer``).
    - heads only (``rho_mlp=None``), at most ``max_head_share`` of the heads and ``max_neuron_share`` of the neurons.
    - ``reference=("benign", "borderline", "framed")``: the data the edit must leave alone holds safe requests that
      sound risky (the tuning half of the project's borderline set) beside plainly benign ones, and both again inside
      the framings jailbreaks use (``probes.framings``), so that a framing alone does not set the keys off.
    - gates (``gate_amount``, off by default; ``GATES``): per layer one MLP neuron rewritten into a detector fitted on
      single tokens that stays silent below its threshold, instead of heads (``solver.gates``).
    - ``max_kl``: the edit's scale is calibrated so its mean per-token KL from the base model on the reference data
      (the model's own answers, every k-th of them: see KL_ANSWERS) is at most this; rho*alpha still chooses which
      components are edited.
    """

    rho_attn: float | None = 0.3
    rho_mlp: float | None = None
    alpha: float = 0.6
    key_direction: str = "selective"
    first_layer: int | None = None  # None: default_first_layer(num_layers); 0: every layer
    positions: str = "predicting"  # where the mean outputs (the steering vector) are read
    input_positions: str = "decision"  # where the mean inputs (scores, keys) are read
    max_kl: float | None = 0.02  # None: no calibration, the elastic net's own scale
    max_head_share: float | None = 0.16
    max_neuron_share: float | None = 0.02
    # What the edit must leave alone: the model's own answers to these prompt sets (built-in names or files).
    # Contrast keys are made silent on their mean input, and the KL budget is measured on them.
    reference: tuple[str, ...] = ("benign", "borderline", "framed")
    # Gates instead of heads (``gate_amount`` set, see GATES): per layer in ``gate_layers`` (shares of the depth,
    # both ends included) one MLP neuron repurposed as a detector fitted on single tokens, silent below a threshold
    # that a share ``gate_quantile`` of the reference's tokens reads under, writing ``gate_amount`` times the layer's
    # steering vector at the probe's median reading (``gate_sharpness``: that reading, in units of the activation's
    # input). Not calibrated to a KL budget (max_kl must be None): below its threshold a gate adds nothing.
    gate_amount: float | None = None
    gate_layers: tuple[float, float] = (0.45, 0.8)
    gate_quantile: float = 0.999
    gate_sharpness: float = 30.0
    gate_in_order: bool = False  # each layer's detector fitted with the earlier layers' gates in place
    gate_decision_quantile: float | None = None  # and silent on this share of the reference prompts' decision tokens

    def __post_init__(self) -> None:
        if self.key_direction not in KEY_DIRECTIONS:
            raise ValueError(f"key_direction must be one of {KEY_DIRECTIONS}, got {self.key_direction!r}")
        for name in ("positions", "input_positions"):
            if getattr(self, name) not in POSITIONS:
                raise ValueError(f"{name} must be one of {POSITIONS}, got {getattr(self, name)!r}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), got {self.alpha}")
        if self.gate_amount is not None:
            if not 0 < self.gate_amount < float("inf"):
                raise ValueError(f"gate_amount must be a positive number, got {self.gate_amount}")
            if self.max_kl is not None:
                raise ValueError(
                    "gates are not calibrated to a KL budget (silent below their threshold): set max_kl=None"
                )
        first, last = self.gate_layers
        if not 0.0 <= first <= last <= 1.0:
            raise ValueError(
                f"gate_layers must be shares of the depth, 0 <= first <= last <= 1, got {self.gate_layers}"
            )
        for name in ("gate_quantile", "gate_decision_quantile"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {value}")
        if not self.gate_sharpness > 0:
            raise ValueError(f"gate_sharpness must be positive, got {self.gate_sharpness}")

    @property
    def needs_reference(self) -> bool:
        """Whether extraction must record reference (benign) inputs for this edit."""
        return self.key_direction in ("contrast", "selective")

    def gated_layers(self, num_layers: int) -> range:
        """The layers that get a gate: ``gate_layers`` as shares of the depth, rounded half up (14-24 of 30)."""
        first, last = (int(share * num_layers + 0.5) for share in self.gate_layers)
        return range(first, min(last, num_layers - 1) + 1)

    def first_edited_layer(self, num_layers: int) -> int:
        first = default_first_layer(num_layers) if self.first_layer is None else self.first_layer
        if not 0 <= first < num_layers:
            raise ValueError(
                f"first layer {first} (--first-layer) is out of range: the model has layers 0-{num_layers - 1}"
            )
        return first


def default_first_layer(num_layers: int) -> int:
    """The first layer edited by default: the upper 60% of the stack. Heads of the early layers write features
    that everything after them reads, so within a KL budget they buy little behaviour (BENCHMARKS.md: first-layer
    study)."""
    return (2 * num_layers) // 5


DEFAULTS = EditSettings()


def defaults_for(behaviour: str | None) -> EditSettings:
    """DEFAULTS for a behaviour: contrast keys for one of EVERY_PROMPT_BEHAVIOURS, selective keys otherwise
    (refusal, a probe file, a name of the user's)."""
    return replace(DEFAULTS, key_direction="contrast") if behaviour in EVERY_PROMPT_BEHAVIOURS else DEFAULTS


PAPER = EditSettings(
    rho_attn=0.45,
    rho_mlp=0.5,
    alpha=0.75,
    key_direction="weight",
    first_layer=0,
    input_positions="predicting",
    max_kl=None,
    max_head_share=None,
    max_neuron_share=None,
    reference=("benign",),
)

GATES = replace(DEFAULTS, max_kl=None, gate_amount=2.0, gate_in_order=True, gate_decision_quantile=1.0)
"""Gates instead of heads (BENCHMARKS.md, "In the package, fitted in order"): layers 14-24 of the embedded model's 30,
a threshold above 99.9% of the reference's tokens and above every reference prompt's decision token, amount 2, each
layer fitted with the earlier gates in place. The decision threshold was added after reading the report splits
(BENCHMARKS.md says so)."""
