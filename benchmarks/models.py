"""Where the evaluated model comes from (`model.source` in conf/eval.yaml).

- `run`: a lamm run folder or checkpoint, rebuilt by `lamm.training.export.load_for_inference`.
- `hf`: a plain causal LM from `lamm.registry.LLMS` (`hf` with a local folder, `tiny_random`,
  `smollm2_135m`, ...), wrapped as a text-only MultimodalLM (no encoders, prefix fusion) so the same
  renderer and inferencers serve it; text-only scenarios only.
- `config`: a model config composed like training (`lamm.config.compose("train", overrides).model`),
  or an inline `model.config` mapping, built with `lamm.build.build_model` (random weights unless the
  parts load pretrained ones): tests and smoke runs.
"""
from __future__ import annotations

from typing import Any

SOURCES = ("run", "hf", "config")


def load_run(path: str) -> tuple[Any, dict[str, Any]]:
    """A trained model from a run folder or checkpoint, and the prompt settings it was trained with."""
    try:
        from lamm.training.export import load_for_inference
    except ImportError as exc:
        raise RuntimeError(f"model.source=run needs lamm.training.export.load_for_inference, which is not "
                           f"available here ({exc})") from exc
    model, cfg = load_for_inference(path)
    data = cfg.get("data") or {}
    hints = {"template": data["template"]} if data.get("template") is not None else {}
    if "system_prompt" in data:  # None is meaningful: the template's default system prompt, as in training
        hints["system_prompt"] = data["system_prompt"]
    return model, hints


def load_hf(llm: dict[str, Any]) -> Any:
    """A plain causal LM from the LLM registry, as a text-only MultimodalLM."""
    from lamm.components import build_component
    from lamm.model import MultimodalLM
    from lamm.registry import FUSIONS, LLMS

    lm = build_component(LLMS, llm, "model.llm")
    fusion = build_component(FUSIONS, {"name": "prefix"}, "model.fusion", hidden_size=lm.hidden_size,
                             num_layers=lm.num_layers)
    return MultimodalLM(lm, {}, {}, fusion)


def load_config(model_cfg: Any = None, overrides: Any = ()) -> Any:
    """A model built from an inline config, or from the training config composed with overrides."""
    from lamm.build import build_model

    if model_cfg is None:
        from lamm.config import compose

        model_cfg = compose("train", list(overrides or [])).model
    return build_model(model_cfg)


def load_model(cfg: Any) -> tuple[Any, str, dict[str, Any]]:
    """The model a `model` node of conf/eval.yaml describes, a short name for output folders, and prompt
    hints (`template`, `system_prompt` a run was trained with; empty for other sources)."""
    from lamm.plain_config import to_plain

    c = to_plain(cfg) or {}
    source = c.get("source", "config")
    hints: dict[str, Any] = {}
    if source not in SOURCES:
        raise ValueError(f"model.source must be one of {', '.join(SOURCES)}, found {source!r}")
    if source == "run":
        if not c.get("path"):
            raise ValueError("model.source=run needs model.path (a run folder or checkpoint), or checkpoint=PATH")
        model, hints = load_run(c["path"])
        parts = [p for p in str(c["path"]).rstrip("/").split("/") if p not in ("", ".", "checkpoints")]
        default = "-".join(parts[-2:]).removesuffix(".ckpt")  # <run name>-<date> (or <date>-<checkpoint>)
    elif source == "hf":
        llm = c.get("llm") or {}
        if isinstance(llm, str):
            llm = {"name": llm}
        if c.get("path") and "path" not in llm:
            llm = {"name": llm.get("name", "hf"), **llm, "path": c["path"]}
        if not llm:
            raise ValueError("model.source=hf needs model.llm (e.g. {name: hf, path: /models/x} or tiny_random)")
        model = load_hf(llm)
        default = llm.get("path", llm.get("name", "hf")).rstrip("/").split("/")[-1]
    else:
        model = load_config(c.get("config"), c.get("overrides") or [])
        ov = c.get("overrides") or []
        default = "config" if not ov else "config-" + "-".join(str(o).split("=")[-1] for o in ov)
    return model, str(c.get("name") or default), hints
