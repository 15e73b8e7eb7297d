"""A corpus of bad inputs, each run through the console script a user would type.

    python tests/corpus/make_corpus.py OUT_DIR            # write the corpus (media, JSON, recipes, ...)
    python tests/corpus/make_corpus.py OUT_DIR --table    # also run every case and print (case, command, message)

Nothing binary lives in git: every file is generated here. Each `Case` is one bad input and the command
that meets it; `expect_one_line_error` (tests/test_corpus.py) checks exit code 2, one error line naming the
culprit, no traceback and nothing half-written. "Half-written" means: for lamm-train, a run folder left
behind (a failed run without a checkpoint is removed, see lamm/cli/errors.py); for lamm-eval, any
results.json, report.md or samples.jsonl in the output folder; lamm-chat and `lamm recipes validate`
write nothing. Skippable data cases are also run together per data format with `data.on_error=skip`,
which must train and count each of them (`skip_runs`). WebDataset shards are not here: lamm-train refuses
streaming data today (its data module needs a map-style dataset), so a bad shard is tested in Python
(tests/test_cli_errors.py::test_broken_shard_is_one_data_error_naming_it).
"""
from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

BIN = Path(sys.executable).parent
# Tiny and fast: a random 4-layer LLM, one step, no worker processes.
TRAIN_FAST = ["model/llm=tiny_random", "trainer.max_steps=1", "data.num_workers=0"]
EVAL_FAST = ["model.source=config", 'model.overrides=["model/llm=tiny_random"]', "batch_size=4"]
# Per data format: the data config, the encoder and the limits every case of the group runs with.
GROUPS = {
    "image": ["data=lamm_2d", "data.media_limits.max_file_bytes=2000"],
    "video": ["data=video", "model/encoder=video", "data.media_limits.max_frames=4",
              "data.media_limits.max_video_seconds=0.5"],
    "points": ["data=lamm_3d", "model/encoder=point_bert", "data.media_limits.max_points=250"],
    "json": ["data=lamm_2d"],
    "llava": ["data=llava"],
    "mmgpt": ["data=mmgpt"],
}


@dataclass
class Case:
    name: str
    kind: str  # image | video | points | json | benchmark | recipe | checkpoint
    command: list[str]  # argv, first item the console script's name
    culprit: str  # what the error line must name (a path, sample id or key)
    group: str | None = None  # data cases: GROUPS key
    skippable: bool = False  # counted and skipped under data.on_error=skip
    record: dict | None = None  # the bad sample (skippable data cases), for the grouped skip run
    outputs: list[Path] = field(default_factory=list)  # folders that must hold no run or results afterwards


def conversation(question: str = "What is it?", answer: str = "A red square.") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` but holds a few rows: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 2)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _png(size: int = 16, noise: bool = False) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8) if noise else \
        np.full((size, size, 3), (255, 0, 0), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _mp4(path: Path, frames: int, fps: int) -> bytes:
    from lamm.datasets.testing import write_video

    write_video(path, num_frames=frames, fps=fps)
    return path.read_bytes()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _train(root: Path, name: str, group: str, data_path: str, *extra: str) -> tuple[list[str], Path]:
    runs = root / "runs" / name
    return (["lamm-train", *GROUPS[group], f"data.path={data_path}", *TRAIN_FAST, "data.on_error=raise",
             "data.batch_size=1", *extra, f"paths.runs_dir={runs}", f"paths.data_dir={root / 'data'}"], runs)


def build(root: Path) -> list[Case]:
    """Write every bad input under `root`; the cases that meet them."""
    root = Path(root).resolve()
    media, cases = root / "media", []
    media.mkdir(parents=True, exist_ok=True)

    def media_case(name: str, group: str, field_name: str, path: Path, culprit: str | None = None,
                   *extra: str) -> None:
        record = {"id": name, field_name: str(path), "conversations": conversation()}
        data = _write(root / "json" / f"{name}.json", json.dumps([record]))
        command, runs = _train(root, name, group, str(data), *extra)
        cases.append(Case(name, group, command, culprit or str(path), group, True, record, [runs]))

    # Images (LAMM 2D JSON, the default small CNN).
    good = _png()
    media_case("image_truncated", "image", "image", _write(media / "truncated.png", _png(64, noise=True)[:300]))
    media_case("image_zero_bytes", "image", "image", _write(media / "zero.png", b""))
    media_case("image_wrong_extension", "image", "image",
               _write(media / "page.png", "<html><body>404 Not Found</body></html>\n"))
    media_case("image_decompression_bomb", "image", "image", _write(media / "bomb.png", png_header(30000, 30000)))
    media_case("image_over_max_pixels", "image", "image", _write(media / "huge.png", png_header(10000, 6000)))
    media_case("image_over_max_file_bytes", "image", "image", _write(media / "noise.png", _png(64, noise=True)))
    media_case("image_missing_file", "image", "image", media / "nowhere.png")

    # Videos (LAMM-shape JSON with "video", the frame-wise video encoder).
    media_case("video_zero_bytes", "video", "video", _write(media / "zero.mp4", b""))
    media_case("video_garbage", "video", "video", _write(media / "garbage.mp4", bytes(range(256)) * 8))
    full = _mp4(media / "full.mp4", frames=8, fps=8)
    media_case("video_truncated", "video", "video", _write(media / "truncated.mp4", full[:len(full) // 3]))
    _mp4(media / "many_frames.mp4", frames=8, fps=32)  # 0.25 s but 8 frames, over max_frames=4
    media_case("video_too_many_frames", "video", "video", media / "many_frames.mp4")
    _mp4(media / "slow.mp4", frames=3, fps=2)  # 1.5 s, over max_video_seconds=0.5
    media_case("video_too_long", "video", "video", media / "slow.mp4")
    (media / "no_frames").mkdir(exist_ok=True)
    media_case("video_empty_frame_folder", "video", "video", media / "no_frames")

    # Point clouds (LAMM 3D JSON with "pcl", the Point-BERT-style encoder).
    rng = np.random.default_rng(0)
    media_case("points_wrong_shape", "points", "pcl", _write(media / "flat.npy", _npy(rng.random((100, 2)))))
    nan = rng.random((100, 3))
    nan[5, 1] = np.nan
    media_case("points_nan", "points", "pcl", _write(media / "nan.npy", _npy(nan)))
    media_case("points_pickled_npy", "points", "pcl",
               _write(media / "pickled.npy", _npy(np.array([{"x": 1}], dtype=object), allow_pickle=True)))
    media_case("points_too_many", "points", "pcl", _write(media / "dense.npy", _npy(rng.random((300, 3)))))
    media_case("points_garbage_ply", "points", "pcl", _write(media / "garbage.ply", "ply\nformat nonsense\n"))
    media_case("points_unknown_extension", "points", "pcl", _write(media / "cloud.xyz", "0 0 0\n1 1 1\n"))

    # Instruction files: file-level faults stop (a broken file cannot be trusted), record-level ones skip.
    def json_case(name: str, group: str, filename: str, content: bytes | str, culprit: str | None = None,
                  skippable: bool = False, record: dict | None = None) -> None:
        path = _write(root / "json" / filename, content)
        command, runs = _train(root, name, group, str(path))
        cases.append(Case(name, "json", command, culprit or str(path), group, skippable, record, [runs]))

    text = json.dumps([{"id": "café", "image": str(media / "good.png"), "conversations": conversation()}],
                      ensure_ascii=False)  # so latin-1 bytes land in the file
    json_case("json_not_utf8", "json", "latin1.json", text.encode("latin-1"))
    bad_line = json.dumps({"id": "x", "conversations": conversation("Qu'est-ce que c'est, é?")},
                          ensure_ascii=False).encode("latin-1")
    json_case("jsonl_line_not_utf8", "json", "latin1.jsonl", bad_line + b"\n", skippable=True)
    json_case("json_malformed", "json", "broken.json", '[{"id": "a", "conversations": [')
    json_case("json_not_a_list", "json", "object.json", json.dumps({"id": "a", "conversations": conversation()}))
    for name, record in (
        ("json_missing_conversations", {"id": "no_conv", "image": str(media / "good.png")}),
        ("json_first_turn_not_human", {"id": "gpt_first", "conversations": conversation()[::-1]}),
        ("json_empty_conversations", {"id": "empty_conv", "conversations": []}),
    ):
        json_case(name, "json", f"{name}.json", json.dumps([record]), culprit=record["id"], skippable=True,
                  record=record)
    cases.append(Case("json_data_file_missing", "json", _train(root, "json_data_file_missing", "json",
                                                               str(root / "json/nowhere.json"))[0],
                      str(root / "json/nowhere.json"), "json", outputs=[root / "runs/json_data_file_missing"]))
    marker = {"id": "two_markers", "image": str(media / "good.png"),
              "conversations": conversation("<image> and <image>: what?")}
    json_case("llava_marker_mismatch", "llava", "llava.json", json.dumps([marker]), culprit="two_markers",
              skippable=True, record=marker)
    alpaca = {"id": "no_instruction", "input": "", "output": "Paris."}
    json_case("mmgpt_missing_instruction", "mmgpt", "alpaca.json", json.dumps([alpaca]), culprit="no_instruction",
              skippable=True, record=alpaca)
    _write(media / "good.png", good)

    # Benchmark folders through lamm-eval (a recipe file per case, as a user would write one).
    bench = root / "bench"

    def eval_case(name: str, scenario: dict, culprit: str) -> None:
        recipe = _write(bench / "recipes" / f"{name}.yaml", json.dumps(
            {"name": name, "scenario": scenario, "instruction": {"name": "standard"}, "inferencer": {"name": "ppl"},
             "metrics": ["accuracy"]}))
        out = root / "eval" / name
        cases.append(Case(name, "benchmark", ["lamm-eval", f"benchmark={recipe}", *EVAL_FAST, f"output_dir={out}"],
                          culprit, outputs=[out]))

    eval_case("lamm_bench_missing_meta_file", {"name": "lamm_bench", "root": str(bench / "lamm_empty"),
                                               "task": "VQA", "dataset": "ScienceQA"},
              str(bench / "lamm_empty/meta_file/VQA_ScienceQA.json"))
    _write(bench / "lamm/meta_file/VQA_ScienceQA.json", '[{"id": "q1", "query": "What?", ')
    eval_case("lamm_bench_malformed_meta_file", {"name": "lamm_bench", "root": str(bench / "lamm"), "task": "VQA",
                                                 "dataset": "ScienceQA"}, str(bench / "lamm/meta_file/VQA_ScienceQA.json"))
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
    _write(bench / "mmbench_b64.tsv", header + "7\tWhat colour?\t\tred\tblue\t\t\tA\tcolour\t***not base64***\n")
    eval_case("mmbench_image_not_base64", {"name": "mmbench", "path": str(bench / "mmbench_b64.tsv")},
              str(bench / "mmbench_b64.tsv"))
    _write(bench / "pope/coco_pope_random.json",
           json.dumps({"question_id": 1, "image": "good.png", "text": "Is there a cat?", "label": "maybe"}) + "\n")
    eval_case("pope_label_not_yes_no", {"name": "pope", "root": str(bench / "pope")},
              str(bench / "pope/coco_pope_random.json"))
    _write(bench / "seed.json", json.dumps({"question_type": {"scene": 1}, "qs": []}))
    eval_case("seed_missing_questions", {"name": "seed_bench", "path": str(bench / "seed.json")},
              str(bench / "seed.json"))

    # Recipes.
    recipes = root / "recipes"
    unknown = _write(recipes / "unknown_name.yaml", "# @package _global_\nmodel:\n  encoder:\n    name: clipp\n")
    data_file = _write(root / "json/one_good.json", json.dumps(
        [{"id": "g", "image": str(media / "good.png"), "conversations": conversation()}]))
    runs = root / "runs" / "recipe_unknown_name"
    cases.append(Case("recipe_unknown_registry_name", "recipe",
                      ["lamm-train", f"experiment={unknown}", "data=lamm_2d", f"data.path={data_file}", *TRAIN_FAST,
                       f"paths.runs_dir={runs}", f"paths.data_dir={root / 'data'}"], "clipp", outputs=[runs]))
    tag = _write(recipes / "python_tag.yaml", "# @package _global_\nseed: !!python/object/apply:os.system [\"id\"]\n")
    runs = root / "runs" / "recipe_python_tag"
    cases.append(Case("recipe_python_tag", "recipe", ["lamm-train", f"experiment={tag}", f"paths.runs_dir={runs}"],
                      str(tag), outputs=[runs]))
    for name, content in (
        ("recipe_bad_yaml", "model:\n  fusion: [prefix,\n"),
        ("recipe_target_key", "# @package _global_\nmodel:\n  encoder:\n    _target_: os.system\n"),
        ("recipe_not_utf8", "# caf\xe9\nseed: 1\n".encode("latin-1")),
        ("recipe_unknown_name_validate", "# @package _global_\nmodel:\n  projector:\n    name: mlpp\n"),
    ):
        path = _write(recipes / f"{name}.yaml", content)
        cases.append(Case(name, "recipe", ["lamm", "recipes", "validate", str(path)], str(path)))

    # Checkpoints, through lamm-chat (never unpickled: only safetensors and weights-only state are read).
    from omegaconf import OmegaConf

    from lamm.config import compose

    ckpts = root / "checkpoints"
    pickled = _write(ckpts / "model.ckpt", b"\x80\x04\x95" + b"\x00" * 64)  # a pickle-only Lightning file
    cases.append(Case("checkpoint_pickle_only", "checkpoint", ["lamm-chat", str(pickled)], str(pickled)))
    config = OmegaConf.to_yaml(compose("train", ["model/llm=tiny_random"]))
    from safetensors.torch import save as save_tensors
    import torch

    for name, weights in (
        ("checkpoint_truncated_safetensors", save_tensors({"projectors.image.0.weight": torch.zeros(64, 64)})[:100]),
        ("checkpoint_wrong_keys", save_tensors({"not.a.lamm.tensor": torch.zeros(2)})),
    ):
        run = ckpts / name
        _write(run / "config.yaml", config)
        _write(run / "checkpoints/last.ckpt/weights.safetensors", weights)
        _write(run / "checkpoints/last.ckpt/state.pt", b"")  # chat reads only the weights
        cases.append(Case(name, "checkpoint", ["lamm-chat", str(run)], str(run)))
    missing = ckpts / "no_such_run"
    runs = root / "runs" / "checkpoint_resume_missing"
    cases.append(Case("checkpoint_resume_missing", "checkpoint",
                      ["lamm-train", f"resume={missing}", "data=lamm_2d", f"data.path={data_file}", *TRAIN_FAST,
                       f"paths.runs_dir={runs}"], str(missing), outputs=[runs]))
    return cases


def skip_runs(root: Path, cases: list[Case]) -> dict[str, tuple[list[str], list[Case]]]:
    """Per data format, one `data.on_error=skip` run over all its skippable cases plus one good sample."""
    root = Path(root).resolve()
    runs: dict[str, tuple[list[str], list[Case]]] = {}
    for group in GROUPS:
        members = [c for c in cases if c.group == group and c.skippable]
        if not members:
            continue
        data_paths = [c.command[[a.startswith("data.path=") for a in c.command].index(True)].split("=", 1)[1]
                      for c in members if c.record is None]
        records = [c.record for c in members if c.record is not None]
        good = {"image": ("image", "good.png"), "video": ("video", "good.mp4"), "points": ("pcl", "good.npy"),
                "json": ("image", "good.png"), "llava": ("image", "good.png")}.get(group)
        if group == "video":
            _mp4(root / "media/good.mp4", frames=3, fps=8)
        if group == "points":
            _write(root / "media/good.npy", _npy(np.random.default_rng(1).random((200, 3)).astype(np.float32)))
        if group == "mmgpt":
            records.append({"id": "good", "instruction": "Capital of France?", "input": "", "output": "Paris."})
        else:
            records.append({"id": "good", good[0]: str(root / "media" / good[1]),
                            "conversations": conversation("<image>\nWhat is it?" if group == "llava" else "What is it?")})
        if records:
            data_paths.append(str(_write(root / "json" / f"skip_{group}.json", json.dumps(records))))
        n = len(members) + 1
        out = root / "runs" / f"skip_{group}"
        command = ["lamm-train", *GROUPS[group], f"data.path=[{','.join(data_paths)}]", *TRAIN_FAST,
                   "data.on_error=skip", f"data.batch_size={n}", f"paths.runs_dir={out}",
                   f"paths.data_dir={root / 'data'}"]
        runs[group] = (command, members)
    return runs


def run(command: list[str], timeout: int = 600):
    import subprocess

    return subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True, timeout=timeout)


def run_all(commands: list[list[str]], workers: int = 2) -> list:
    """Run commands two at a time (the machine has two cores); results in order."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, commands))


def error_line(stderr: str) -> str:
    """The one error line (`PROG: error: ...`; `lamm recipes validate` writes `FILE:LINE: problem`)."""
    lines = [line for line in stderr.splitlines() if ": error: " in line] or \
        [line for line in stderr.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"<{len(lines)} error lines>"


def table(cases: list[Case], results: list, root: Path | None = None) -> str:
    """Markdown: case, command, message (the corpus folder written as $C)."""
    def short(text: str) -> str:
        text = text.replace(str(Path(root).resolve()), "$C") if root else text
        return text.replace("|", "\\|")

    rows = ["| case | command | message |", "|---|---|---|"]
    for case, result in zip(cases, results):
        rows.append(f"| {case.name} | `{short(' '.join(case.command))}` | {short(error_line(result.stderr))} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the corpus into")
    parser.add_argument("--table", action="store_true", help="run every case and print (case, command, message)")
    args = parser.parse_args(argv)
    cases = build(args.out)
    print(f"{len(cases)} cases written under {args.out}", file=sys.stderr)
    if args.table:
        print(table(cases, run_all([c.command for c in cases]), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
