"""Run one recipe (scenario + instruction + inferencer + metrics) on one model and write its outputs.

Order, batching and sharding are fixed by the recipe alone, so results do not depend on resumption
or on the number of processes:
- samples keep the scenario's order; batch i is samples [i*B, (i+1)*B); rank r of W runs the batches
  with i % W == r (whole batches, so a batch's padding -- and its floats -- are the same everywhere);
- after each batch the new records are appended to the rank's samples file and flushed; a restarted
  run reads the ids already there and skips them (a batch with some done samples is rerun whole and
  only the missing records are written); a line that is not a whole record (a kill mid-write) is
  never trusted: the rank cuts it off before appending, says so in one log line, and reruns its sample;
- at the end the records of all ranks are merged once with `torch.distributed.all_gather_object`
  (no file polling), rank 0 rewrites samples.jsonl in scenario order and writes results.json,
  report.md and chart.png.

Records are rounded (probabilities to 6 digits) before they are used, so metrics computed from fresh
records and from records read back from disk are identical.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import torch

from lamm.benchmarks.base import EvalSample, Query
from lamm.benchmarks.bootstrap import BootstrapSpec, standard_errors
from lamm.benchmarks.build import build_inferencer, build_instruction, build_metrics, build_scenario
from lamm.benchmarks.render import Renderer
from lamm.components import ConfigProblem, check_component
from lamm.faults import kill_self, triggered
from lamm.plain_config import to_plain
from lamm.suggest import did_you_mean

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
MAX_CHANGED_IDS = 20  # batch-invariance check: ids of changed answers listed in results.json
RECIPE_KEYS = {"name", "scenario", "instruction", "inferencer", "metrics", "description", "batch_size", "bootstrap"}


@dataclass
class EvalSpec:
    """One evaluation: a scenario, an instruction, an inferencer and metrics, each by registry name (what a
    benchmark recipe file holds, parsed; the desiderata derive several from one recipe)."""

    name: str
    scenario: dict[str, Any]
    instruction: dict[str, Any] = field(default_factory=lambda: {"name": "standard"})
    inferencer: dict[str, Any] = field(default_factory=lambda: {"name": "direct"})
    metrics: list[Any] = field(default_factory=lambda: ["accuracy"])
    description: str = ""
    batch_size: int | None = None
    bootstrap: dict[str, Any] | None = None  # error bars: {samples, seed, max_recompute}; overrides lamm-eval's

    @classmethod
    def from_config(cls, cfg: Any) -> "EvalSpec":
        """From a recipe config node; unknown keys are errors (a typo must not be silently ignored)."""
        plain = to_plain(cfg)
        if not isinstance(plain, dict):
            raise ValueError(f"benchmark: expected a recipe mapping, found {type(plain).__name__}")
        problems = recipe_key_problems(plain)
        if problems:
            raise ValueError(f"benchmark.{problems[0]}")
        if "scenario" not in plain:
            raise ValueError("benchmark.scenario: missing (e.g. {name: synth_shapes})")
        return cls(**{"name": plain.get("name") or "recipe", **{k: v for k, v in plain.items() if k != "name"}})

    def check(self) -> "EvalSpec":
        """Fail fast (with did-you-mean) on a registry name nobody registered or keys its factory lacks."""
        from lamm.registry import INFERENCERS, INSTRUCTIONS, METRICS, SCENARIOS

        check_component(SCENARIOS, self.scenario, "benchmark.scenario", nested={"scenario": SCENARIOS})
        check_component(INSTRUCTIONS, self.instruction, "benchmark.instruction")
        check_component(INFERENCERS, self.inferencer, "benchmark.inferencer")
        metrics = to_plain(self.metrics)
        for i, m in enumerate(metrics if isinstance(metrics, list) else [metrics]):
            check_component(METRICS, m, f"benchmark.metrics[{i}]")
        return self


def recipe_key_problems(recipe: Mapping[str, Any], allowed: Collection[str] = RECIPE_KEYS) -> list[ConfigProblem]:
    """One problem, with a did-you-mean, for each key of a recipe mapping that is not in `allowed`."""
    keys = sorted(allowed)
    return [ConfigProblem(str(key), f"unknown recipe key.{did_you_mean(key, keys)} Keys: {', '.join(keys)}")
            for key in recipe if key not in allowed]


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and "id" in rec else None


def _split_records(path: Path) -> tuple[list[dict[str, Any]], int, list[int]]:
    """The records of a samples file, the byte length up to its last record, and the numbers of the
    lines that are not records (a kill mid-write tears the last line; nothing that is not a whole
    record is trusted: its sample is evaluated again)."""
    *lines, tail = path.read_bytes().split(b"\n")  # `tail`: bytes after the last newline (a torn line)
    out, good, bad, offset = [], 0, [], 0
    for number, line in enumerate(lines, 1):
        offset += len(line) + 1
        rec = _parse_record(line)
        if rec is not None:
            out.append(rec)
            good = offset
        elif line.strip():
            bad.append(number)
    if tail:
        bad.append(len(lines) + 1)
    return out, good, bad


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a samples file; a torn line (killed mid-write) is left out."""
    return _split_records(path)[0] if path.is_file() else []


def drop_torn_tail(path: Path) -> None:
    """Cut what follows the last record off a samples file before appending (a new record starts a line)."""
    if not path.is_file():
        return
    _, good, bad = _split_records(path)
    size = path.stat().st_size
    if size > good:
        os.truncate(path, good)
    if bad:
        log.warning("%s: line %s %s not a whole record (an interrupted run); %s evaluated again", path,
                    ", ".join(map(str, bad)), "is" if len(bad) == 1 else "are",
                    "its sample is" if len(bad) == 1 else "their samples are")


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def _extra_for_record(sample: EvalSample, query: Query) -> dict[str, Any]:
    keep = {k: v for k, v in sample.extra.items()
            if k in ("corruption", "circular_group", "negatives", "source_id", "kind", "question_group", "answerable")}
    keep.update({k: v for k, v in query.extra.items() if k in ("option_map", "examples")})
    return keep


class Evaluator:
    """Evaluates a model on one recipe into `out_dir` (see the module docstring for the guarantees)."""

    def __init__(self, model: Any, recipe: EvalSpec, out_dir: str | Path, batch_size: int = 16,
                 template: str = "auto", model_name: str = "model", resume: bool = True,
                 system_prompt: str | None = "none",
                 max_length: int | None = None, progress: bool = True,
                 recipe_file: dict[str, Any] | None = None, bootstrap: Any = None,
                 check_batch_invariance: bool = False) -> None:
        self.model = model.eval()
        self.recipe_file = recipe_file  # kind, name, path, sha256 of the recipe YAML (lamm.recipes.hashing)
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.batch_size = recipe.batch_size or batch_size
        self.model_name, self.resume, self.progress = model_name, resume, progress
        # Build every part first: a misspelt name fails before any model work.
        self.scenario = build_scenario(recipe.scenario)
        self.instruction = build_instruction(recipe.instruction)
        self.inferencer = build_inferencer(recipe.inferencer)
        self.metrics = build_metrics(recipe.metrics)
        self.renderer = Renderer(model, template=self.instruction.template or template, system_prompt=system_prompt,
                                 max_length=max_length)
        where = "benchmark.bootstrap" if recipe.bootstrap is not None else "bootstrap"
        self.bootstrap = BootstrapSpec.from_config(bootstrap if recipe.bootstrap is None else recipe.bootstrap, where)
        self.check_batch_invariance = check_batch_invariance

    def _samples(self) -> list[EvalSample]:
        samples = self.scenario.samples()
        seen: set[str] = set()
        for s in samples:
            if s.id in seen:
                raise ValueError(f"scenario {self.recipe.scenario.get('name')}: duplicate sample id {s.id!r}")
            seen.add(s.id)
            if self.inferencer.needs_options and not s.options:
                raise ValueError(f"inferencer {self.inferencer.name} needs options; sample {s.id!r} (task {s.task!r}) "
                                 "is open-ended (use inferencer direct, or restrict scenario.tasks)")
        return samples

    def _record(self, sample: EvalSample, query: Query, pred: Any) -> dict[str, Any]:
        rec = {
            "id": sample.id, "task": sample.task, "prompt": pred.prompt, "raw": pred.raw,
            "options": list(sample.options), "labels": list(query.labels), "answer": sample.answer,
        }
        if pred.probs is not None:
            rec["probs"] = pred.probs
        if pred.turns:
            rec["turns"] = pred.turns
        rec["extra"] = _extra_for_record(sample, query)
        rec = _jsonable(rec)
        primary = self.metrics[0]
        rec["parsed"] = _jsonable(primary.parse(rec))
        rec["correct"] = primary.judge(rec)
        return rec

    def _samples_path(self, rank: int, world: int) -> Path:
        return self.out_dir / (SAMPLES_FILE if world == 1 else f"samples.rank{rank}.jsonl")

    def _done(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if not self.resume:
            return done
        for path in [self.out_dir / SAMPLES_FILE, *sorted(self.out_dir.glob("samples.rank*.jsonl"))]:
            for rec in read_records(path):
                done.setdefault(rec["id"], rec)
        return done

    @torch.no_grad()
    def run(self) -> dict[str, Any]:
        """Evaluate (resuming), merge ranks, write outputs on rank 0; every rank returns the results."""
        rank, world = dist_info()
        samples = self._samples()
        if rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                for p in [self.out_dir / SAMPLES_FILE, *self.out_dir.glob("samples.rank*.jsonl")]:
                    p.unlink(missing_ok=True)
            self._check_same_recipe()
        if world > 1:
            torch.distributed.barrier()
        self.instruction.prepare(self.scenario, self.model)
        done = self._done()
        mine: list[dict[str, Any]] = []
        batches = [samples[i:i + self.batch_size] for i in range(0, len(samples), self.batch_size)]
        todo = [b for i, b in enumerate(batches) if i % world == rank and any(s.id not in done for s in b)]
        start, n_new = time.perf_counter(), 0
        path = self._samples_path(rank, world)
        drop_torn_tail(path)
        with open(path, "a", encoding="utf-8") as fh:
            for k, batch in enumerate(todo):
                queries = [self.instruction.query(s) for s in batch]
                preds = self.inferencer(self.model, batch, queries, self.renderer)
                lines = []
                for s, q, p in zip(batch, queries, preds):
                    if s.id in done:
                        continue
                    rec = self._record(s, q, p)
                    mine.append(rec)
                    lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
                text = "".join(lines)
                if lines and triggered("samples.torn_line"):  # the test hook: killed mid-line
                    fh.write(text[:len(text) - len(lines[-1]) // 2])
                    fh.flush()
                    kill_self()
                fh.write(text)  # one write per batch, then flushed: a kill tears at most the last line
                fh.flush()
                os.fsync(fh.fileno())
                n_new += len(lines)
                if self.progress and rank == 0:
                    log.info("%s: batch %d/%d (%d samples, %.1f samples/s)", self.recipe.name, k + 1, len(todo),
                             n_new, n_new / max(1e-9, time.perf_counter() - start))
        merged = self._merge(mine, done, world)
        alone = self._batch_one_records(samples, rank, world) if self.check_batch_invariance else None
        results: dict[str, Any] | None = None
        if rank == 0:
            order = {s.id: i for i, s in enumerate(samples)}
            records = sorted((r for r in merged.values() if r["id"] in order), key=lambda r: order[r["id"]])
            results = self._results(records)
            if alone is not None:
                results["batch_invariance"] = self._invariance(records, alone)
            from lamm.benchmarks.report import write_outputs

            write_outputs(self.out_dir, records, results)
            for p in self.out_dir.glob("samples.rank*.jsonl"):
                p.unlink()
        if world > 1:
            box = [results]
            torch.distributed.broadcast_object_list(box, src=0)
            results = box[0]
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _batch_one_records(self, samples: Sequence[EvalSample], rank: int, world: int) -> dict[str, dict[str, Any]]:
        """Every sample evaluated again alone (batch size 1), sharded over ranks like the run; merged on all."""
        mine = []
        for i, s in enumerate(samples):
            if i % world == rank:
                q = self.instruction.query(s)
                mine.append(self._record(s, q, self.inferencer(self.model, [s], [q], self.renderer)[0]))
        return self._merge(mine, {}, world)

    def _invariance(self, records: Sequence[dict[str, Any]], alone: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """How many answers change between the run's batch size and batch size 1, in the model's precision."""
        changed = [r["id"] for r in records
                   if (r["raw"], r.get("turns")) != (alone[r["id"]]["raw"], alone[r["id"]].get("turns"))]
        verdicts = [r["id"] for r in records if r["correct"] != alone[r["id"]]["correct"]]
        prob_diffs = [abs(a - b) for r in records if r.get("probs") and alone[r["id"]].get("probs")
                      for a, b in zip(r["probs"], alone[r["id"]]["probs"])]
        reference = [alone[r["id"]] for r in records]
        metrics_alone: dict[str, float] = {}
        for m in self.metrics:
            metrics_alone.update(m.compute(reference))
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in self.model.parameters()})
        return _jsonable({"batch_size": self.batch_size, "reference_batch_size": 1, "dtypes": dtypes,
                          "n": len(records), "changed": len(changed), "changed_verdicts": len(verdicts),
                          "max_prob_diff": max(prob_diffs) if prob_diffs else None,
                          "changed_ids": changed[:MAX_CHANGED_IDS], "metrics_batch_1": metrics_alone})

    def _fingerprint(self) -> dict[str, Any]:
        return _jsonable({"recipe": self.recipe.name, "model": self.model_name, "scenario": self.recipe.scenario,
                          "instruction": self.recipe.instruction, "inferencer": self.recipe.inferencer,
                          "metrics": self.recipe.metrics, "batch_size": self.batch_size,
                          "template": self.renderer.template.name,
                          "system_prompt": self.renderer.template.system_prompt})

    def _check_same_recipe(self) -> None:
        """Refuse to resume into a folder written by a different recipe (stale answers would be mixed in)."""
        path = self.out_dir / "recipe.json"
        mine = self._fingerprint()
        if path.is_file() and self.resume:
            old = json.loads(path.read_text(encoding="utf-8"))
            if old != mine:
                diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
                raise ValueError(f"{self.out_dir} holds an evaluation with a different {', '.join(diff)}; "
                                 "use resume=false to start over, or another output_dir")
        path.write_text(json.dumps(mine, indent=1) + "\n", encoding="utf-8")

    def _merge(self, mine: list[dict], done: dict[str, dict], world: int) -> dict[str, dict]:
        merged = dict(done)
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, mine)
            for part in gathered:
                for rec in part:
                    merged.setdefault(rec["id"], rec)
        else:
            for rec in mine:
                merged.setdefault(rec["id"], rec)
        return merged

    def _results(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        metrics: dict[str, float] = {}
        computed = [(m, m.compute(records)) for m in self.metrics]
        for _, values in computed:
            metrics.update(values)
        stderr, recomputed = standard_errors(computed, records, self.bootstrap)
        per_task: dict[str, dict[str, Any]] = {}
        for task in sorted({r["task"] for r in records}):
            rs = [r for r in records if r["task"] == task]
            judged = [r["correct"] for r in rs if r["correct"] is not None]
            closed = [1.0 / len(r["options"]) for r in rs if r["options"]]
            per_task[task] = {"n": len(rs), "accuracy": (sum(judged) / len(judged)) if judged else None,
                              "chance": sum(closed) / len(closed) if closed else None}
        unparseable = [r["id"] for r in records if r["parsed"] is None]
        return _jsonable({
            "recipe": self.recipe.name,
            "recipe_file": self.recipe_file,
            "model": self.model_name,
            "n": len(records),
            "metrics": metrics,
            "stderr": {k: stderr[k] for k in metrics if k in stderr},
            "bootstrap": {**self.bootstrap.as_dict(), "recomputed": recomputed},
            "per_task": per_task,
            "unparseable": len(unparseable),
            "config": {"scenario": self.recipe.scenario, "instruction": self.recipe.instruction,
                       "inferencer": self.recipe.inferencer, "metrics": self.recipe.metrics,
                       "batch_size": self.batch_size, "template": self.renderer.template.name,
                       "system_prompt": self.renderer.template.system_prompt},
        })


def evaluate(model: Any, recipe: EvalSpec | dict | Any, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Evaluate `model` on `recipe` (an EvalSpec or a benchmark recipe config) into `out_dir`; returns results.json's content."""
    if not isinstance(recipe, EvalSpec):
        recipe = EvalSpec.from_config(recipe)
    return Evaluator(model, recipe, out_dir, **kwargs).run()
