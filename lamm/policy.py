"""Which parts of a MultimodalLM train: a declared mode per part, applied in one place."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Collection

from torch import nn

MODES = {
    "encoder": ("frozen", "full"),
    "projector": ("frozen", "full"),
    "fusion": ("frozen", "full", "lora"),
    "llm": ("frozen", "lora", "full"),
    "media_tokens": ("frozen", "full"),
}


@dataclass(frozen=True)
class TrainablePolicy:
    """Mode per part; `lora` trains only peft adapters of that part."""

    encoder: str = "frozen"
    projector: str = "full"
    fusion: str = "full"
    llm: str = "lora"
    media_tokens: str = "full"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in MODES[f.name]:
                raise ValueError(f"model.policy.{f.name}: {value!r} is not one of {list(MODES[f.name])}")

    @classmethod
    def from_config(cls, cfg: Any) -> "TrainablePolicy":
        data = dict(cfg or {})
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"model.policy: unknown part(s) {sorted(unknown)}; parts are {list(MODES)}")
        return cls(**data)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def part_of(name: str) -> str:
    """The policy part a MultimodalLM parameter name belongs to (the one classifier: the policy, the
    parameter report and the optimizer's groups, lamm.training.optim.param_groups, all use it)."""
    if name.startswith("encoders."):
        return "encoder"
    if name.startswith("projectors."):
        return "projector"
    if name.startswith("fusion."):
        return "fusion"
    if name == "llm.media_token_embedding":
        return "media_tokens"
    return "llm"


def apply_policy(model: nn.Module, policy: TrainablePolicy) -> None:
    """Set requires_grad on every parameter from the policy (and only from it)."""
    modes = policy.as_dict()
    for name, param in model.named_parameters():
        mode = modes[part_of(name)]
        param.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))


def parameter_report(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameter counts per part."""
    report = {part: [0, 0] for part in MODES}
    for name, param in model.named_parameters():
        counts = report[part_of(name)]
        counts[1] += param.numel()
        counts[0] += param.numel() if param.requires_grad else 0
    return {part: (t, n) for part, (t, n) in report.items()}


# lamm-train's own key in `model.encoder` (not an encoder argument): freezing a random encoder on purpose.
ALLOW_RANDOM_FROZEN = "allow_random_frozen"


def split_encoder_node(node: Any) -> tuple[Any, Any]:
    """`model.encoder` without lamm's `allow_random_frozen` flag (the encoder never sees it), and the flag;
    None when the flag was all there was (no encoder chosen)."""
    if not isinstance(node, dict) or ALLOW_RANDOM_FROZEN not in node:
        return node, False
    node = dict(node)
    flag = node.pop(ALLOW_RANDOM_FROZEN)
    return node or None, flag


def check_frozen_encoders_have_weights(model: nn.Module, policy: TrainablePolicy, allow: Any,
                                       initialised: Collection[str] = ()) -> None:
    """Refuse (one-line ValueError) to train with a frozen encoder whose weights are random.

    A frozen encoder is fine when it loaded weights itself (`has_pretrained_weights`) or when every one of
    its tensors came from `initialised` (names copied by init_from); from-scratch recipes train it anyway.
    """
    if not isinstance(allow, bool):
        raise ValueError(f"model.encoder.{ALLOW_RANDOM_FROZEN}: expected true or false, found {allow!r}")
    if allow or policy.encoder != "frozen":
        return
    copied = set(initialised)
    for modality, encoder in model.encoders.items():
        names = [f"encoders.{modality}.{k}" for k in encoder.state_dict()]
        if encoder.has_pretrained_weights or (names and all(n in copied for n in names)):
            continue
        raise ValueError(
            f"model.encoder: the {modality} encoder {type(encoder).__name__} is frozen (model.policy.encoder=frozen) "
            f"but has no pretrained weights, so it would only feed random features; give its weights "
            f"(model.encoder.path= / model.encoder.pretrained= / init_from=) or set "
            f"model.encoder.{ALLOW_RANDOM_FROZEN}=true")


class ZeroGateError(ValueError):
    """The policy trains parameters that a frozen gate at 0 cuts off from every gradient."""


def zero_gradient_parameters(model: nn.Module) -> list[str]:
    """Trainable parameters whose gradient is exactly zero by construction: behind a fusion gate that
    is frozen at 0 (and, when that shuts every media path, the trainable encoders and projectors)."""
    silenced, media_shut = model.fusion.zero_gated_parameters()
    names = [f"fusion.{n}" for n in silenced]
    if media_shut:
        names += [n for n, p in model.named_parameters() if p.requires_grad and part_of(n) in ("encoder", "projector")]
    return names


def check_gradients_flow(model: nn.Module, policy: TrainablePolicy) -> None:
    """Refuse a policy that trains parameters a frozen zero gate cuts off (checked once the run's weights,
    `init_from` included, are in place: imported or trained gates are not 0)."""
    dead = zero_gradient_parameters(model)
    if dead:
        more = f" and {len(dead) - 1} more" if len(dead) > 1 else ""
        raise ZeroGateError(
            f"model.policy.fusion={policy.fusion} freezes the fusion's gates, which are 0, so '{dead[0]}'{more} "
            f"would train with exactly zero gradient: start from trained gates with init_from=<a run or import, "
            f"e.g. lamm import openflamingo ...>, or train the gates (model.policy.fusion=full)")
