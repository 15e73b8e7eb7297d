"""README: every command in its ```bash blocks is either run here (cheap ones) or mapped to the test that runs it.

Cheap commands run in one temporary folder, in the order below (the copied recipe is validated and composed
after `lamm recipes cp`). Expensive ones (training, real-model evaluation and chat, multi-process runs) name
the test function that exercises them; that function must exist. A README command in neither fails.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent

# command as written in the README -> a text its output must contain (run in this order, in one folder)
RUN = {
    ".venv/bin/lamm recipes list": "quickstart",
    ".venv/bin/lamm recipes show quickstart": "# @package _global_",
    ".venv/bin/lamm recipes cp quickstart my_recipes/": "my_recipes/quickstart.yaml",
    ".venv/bin/lamm recipes validate my_recipes/quickstart.yaml": "my_recipes/quickstart.yaml: ok (experiment",
    ".venv/bin/lamm-train experiment=my_recipes/quickstart.yaml --cfg job": "run_name: quickstart-${model.fusion.name}",
    ".venv/bin/lamm-train experiment=quickstart --cfg job": "name: smollm2_135m",
    ".venv/bin/lamm registry": "small_cnn",
    ".venv/bin/lamm demo model/llm=tiny_random model/fusion=gated_xattn": "image prompt",
    ".venv/bin/lamm env": "lamm cache",
}

# command as written in the README -> "file::test" that runs it (or its shrunk twin: tiny model, few steps)
COVERED_BY = {
    "bash scripts/setup.sh && .venv/bin/lamm-train experiment=quickstart":
        "tests/test_training.py::test_lamm_train_end_to_end_run_folder",
    "bash scripts/setup.sh && .venv/bin/pytest -q": "tests/test_packaging.py::test_tests_see_hf_datasets_or_none",
    ".venv/bin/lamm-train experiment=quickstart model/fusion=gated_xattn":
        "tests/test_training.py::test_multirun_gives_one_folder_per_fusion",
    ".venv/bin/lamm-train -m model/fusion=prefix,gated_xattn debug=fast":
        "tests/test_training.py::test_multirun_gives_one_folder_per_fusion",
    ".venv/bin/lamm-train experiment=quickstart resume=auto": "tests/test_training.py::test_exact_resume_after_sigkill",
    ".venv/bin/lamm cache-features experiment=llava15_stage1 model.encoder.path=/models/clip-vit-large-patch14-336 "
    "model.llm.path=/models/vicuna-13b-v1.5 data.path=/data/llava/blip_laion_cc_sbu_558k.json "
    "data.feature_cache=/data/feats/llava15": "tests/test_feature_cache.py::test_cache_features_then_lamm_train_reads_it",
    ".venv/bin/lamm-train experiment=llava15_stage1 model.encoder.path=/models/clip-vit-large-patch14-336 "
    "model.llm.path=/models/vicuna-13b-v1.5 data.path=/data/llava/blip_laion_cc_sbu_558k.json "
    "data.feature_cache=/data/feats/llava15": "tests/test_feature_cache.py::test_cache_features_then_lamm_train_reads_it",
    ".venv/bin/lamm-train experiment=quickstart data.packing=true data.group_by_length=true":
        "tests/test_feature_cache.py::test_cache_features_then_lamm_train_reads_it",
    ".venv/bin/lamm-train experiment=quickstart compile=true":
        "tests/test_compile.py::test_compiled_training_step_gives_the_eager_weights",
    ".venv/bin/lamm-train trainer=ddp_cpu debug=fast": "tests/test_training.py::test_ddp_two_cpu_processes_agree",
    ".venv/bin/lamm-train data=webdataset 'data.path=\"/data/shards/train-{000000..000099}.tar\"' trainer=ddp":
        "tests/test_streaming.py::test_two_processes_two_workers_read_every_sample_once_per_epoch",
    ".venv/bin/lamm-train data=mixture data.mode=alternating data.datasets.0.path=/data/lamm_2d.json "
    "data.datasets.1.path=/data/dolly.jsonl": "tests/test_streaming.py::test_lamm_train_mixture_alternating_of_a_json_file_and_shards",
    ".venv/bin/lamm-train trainer=fsdp_cpu debug=fast":
        "tests/test_fsdp.py::test_resume_after_sigkill_gives_the_uninterrupted_weights_exactly",
    ".venv/bin/lamm-train experiment=openflamingo_9b trainer.devices=8 gradient_checkpointing=true":
        "tests/test_fsdp.py::test_resume_after_sigkill_gives_the_uninterrupted_weights_exactly",
    ".venv/bin/lamm-eval benchmark=shapes_ppl checkpoint=runs/quickstart-prefix/<time>":
        "tests/test_bench_eval.py::test_run_source",
    ".venv/bin/lamm-eval benchmark=desiderata checkpoint=runs/quickstart-prefix/<time>":
        "tests/test_bench_eval.py::test_desiderata_one_command",
    ".venv/bin/lamm-eval benchmark=shapes_ppl checkpoint=runs/quickstart-prefix/<time> bootstrap.samples=2000 bootstrap.seed=1":
        "tests/test_eval_stats.py::test_lamm_eval_bootstrap_and_batch_invariance_check",
    ".venv/bin/lamm-eval benchmark=shapes_ppl checkpoint=runs/quickstart-prefix/<time> check_batch_invariance=true":
        "tests/test_eval_stats.py::test_lamm_eval_bootstrap_and_batch_invariance_check",
    ".venv/bin/lamm-eval compare outputs/eval/<model A>/shapes_ppl outputs/eval/<model B>/shapes_ppl --out ab":
        "tests/test_eval_stats.py::test_compare_console_script_difference_and_p_values",
    ".venv/bin/lamm-eval benchmark=flamingo_suite data_root=/data checkpoint=runs/quickstart-gated_xattn/<time>":
        "tests/test_bench_fewshot.py::test_flamingo_suite_one_command",
    ".venv/bin/lamm-train --config-dir my_conf experiment=mine":
        "tests/test_recipes_cli.py::test_config_dir_recipe_trains_and_records_its_hash",
    ".venv/bin/lamm-train experiment=my_recipes/quickstart.yaml":
        "tests/test_recipes_cli.py::test_recipe_file_path_trains_and_records_the_file",
    ".venv/bin/lamm-eval benchmark=path/to/recipe.yaml checkpoint=runs/quickstart-prefix/<time>":
        "tests/test_recipes_cli.py::test_benchmark_recipe_from_anywhere_records_its_hash",
    ".venv/bin/lamm-train --trust-recipe experiment=path/to/recipe.yaml":
        "tests/test_recipes_cli.py::test_hostile_recipe_through_lamm_train_runs_only_when_trusted",
    ".venv/bin/lamm synth --out data/synth --seed 0": "tests/test_synth.py::test_cli_runs_and_reruns_in_place",
    ".venv/bin/lamm-chat runs/quickstart-prefix/<time>": "tests/test_chat.py::test_terminal_session_with_a_trained_run",
    ".venv/bin/lamm-chat runs/quickstart-prefix/<time> --stats":
        "tests/test_chat.py::test_terminal_session_with_a_trained_run",
    "printf '/image shape.png\\nWhat colour is the shape?\\n/quit\\n' | .venv/bin/lamm-chat runs/quickstart-prefix/<time>":
        "tests/test_chat.py::test_pipe_multimodal_session",
    ".venv/bin/lamm-chat model/llm=tiny_random --max-new-tokens 20": "tests/test_chat.py::test_pipe_multimodal_session",
    ".venv/bin/lamm-serve runs/quickstart-prefix/<time>":
        "tests/test_serve.py::test_answers_equal_lamm_chats_over_two_turns_with_one_and_two_images",
    ".venv/bin/lamm-serve runs/quickstart-prefix/<time> --host 0.0.0.0 --api-key sk-lamm-secret":
        "tests/test_serve.py::test_bad_requests_get_one_line_4xx_naming_the_field_and_the_server_keeps_serving",
    ".venv/bin/torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr node0 --master_port 29500 "
    "--no-python .venv/bin/lamm-train experiment=lamm_2d trainer=ddp trainer.devices=8 trainer.num_nodes=2 "
    "hydra.run.dir=runs/lamm_2d/job-1": "tests/test_training.py::test_ddp_two_cpu_processes_agree",
    "MASTER_ADDR=node0 MASTER_PORT=29500 NODE_RANK=0 .venv/bin/lamm-train experiment=lamm_2d trainer=ddp "
    "trainer.devices=8 trainer.num_nodes=2 hydra.run.dir=runs/lamm_2d/job-1":
        "tests/test_trainer_config.py::test_global_batch_counts_every_process_of_every_node",
    "srun .venv/bin/lamm-train experiment=lamm_2d trainer=deepspeed_zero3 trainer.devices=8 trainer.num_nodes=2 "
    "hydra.run.dir=runs/lamm_2d/$SLURM_JOB_ID": "tests/test_deepspeed.py::test_deepspeed_configs_build_lightnings_strategy",
    "bash scripts/gpu_check.sh": "tests/test_gpu_check.py::test_gpu_check_parses_and_is_skipped_in_one_line_without_a_gpu",
    ".venv/bin/lamm-train experiment=llava15_stage1 model/encoder=hf_clip_vit_l14_336 "
    "model.encoder.path=/models/clip-vit-large-patch14-336 model.llm.path=/models/vicuna-13b-v1.5 "
    "data.path=/data/llava/blip_laion_cc_sbu_558k.json": "tests/test_hf_vision.py::test_lamm_train_with_a_clip_tower_folder",
    ".venv/bin/lamm-train experiment=lamm_2d model.encoder.pretrained=/models/clip-vit-l-14.safetensors "
    "model.llm.path=/models/vicuna-13b-v1.5 data.path=/data/LAMM/LAMM_instruct_2d.json":
        "tests/test_encoder_weights.py::test_lamm_train_research_recipe_without_weights_exits_2",
    ".venv/bin/lamm import hf_blip2 /models/blip2-opt-2.7b runs/blip2-opt-2.7b":
        "tests/test_zoo_blip2.py::test_logits_and_greedy_tokens_equal_transformers",
    ".venv/bin/lamm import hf_llava /models/llava-1.5-7b-hf runs/llava-1.5-7b --option dtype=bfloat16":
        "tests/test_zoo_llava.py::test_imported_llava_equals_transformers",
    ".venv/bin/lamm import llava_original /models/llava-v1.5-7b-pretrain/mm_projector.bin runs/llava-stage1 "
    "--option llm=/models/vicuna-7b-v1.5 --option vision=/models/clip-vit-large-patch14-336":
        "tests/test_zoo_llava.py::test_llava_original_loads_completely",
    ".venv/bin/lamm-train init_from=runs/llava-1.5-7b data=lamm_2d data.path=/data/LAMM/LAMM_instruct_2d.json":
        "tests/test_zoo_llava.py::test_finetuning_the_import_lowers_the_loss",
    ".venv/bin/lamm export --to hf_llava runs/prefix/<time> /models/my-llava-hf":
        "tests/test_zoo_llava.py::test_exported_runs_load_in_transformers_with_lamm_logits",
    ".venv/bin/lamm-train experiment=blip2_finetune init_from=runs/blip2-opt-2.7b data.path=/data/vqa/train.json":
        "tests/test_zoo_blip2.py::test_blip2_finetune_recipe_trains_the_qformer_from_the_import",
    ".venv/bin/lamm import lamm /models/LAMM-2D-13B/pytorch_model.pt runs/lamm-2d --option llm=/models/vicuna-13b-v0 "
    "--option vision=/models/clip-vit-large-patch14":
        "tests/test_zoo_lamm.py::test_every_tensor_lands_in_the_model_and_the_config_is_lamms",
    ".venv/bin/lamm import openflamingo /models/OpenFlamingo-3B-vitl-mpt1b/checkpoint.pt runs/openflamingo-3b "
    "--option llm=/models/mpt-1b-redpajama-200b --option vision=/models/ViT-L-14.pt":
        "tests/test_zoo_openflamingo.py::test_logits_and_16_greedy_tokens_equal_openflamingos",
    ".venv/bin/lamm import hf_idefics /models/idefics-9b-instruct runs/idefics-9b":
        "tests/test_zoo_idefics.py::test_console_import_equals_transformers_logits_and_greedy_tokens",
    ".venv/bin/lamm import mmgpt /models/mmgpt-lora-v0-release.pt runs/mmgpt --option base=runs/openflamingo-9b":
        "tests/test_zoo_mmgpt.py::test_import_is_the_base_plus_its_lora_merged_by_hand",
    ".venv/bin/lamm-train experiment=multimodal_gpt init_from=runs/mmgpt data.datasets.0.path=/data/dolly.jsonl "
    "data.datasets.1.path=/data/mmgpt_vision.json": "tests/test_zoo_mmgpt.py::test_multimodal_gpt_recipe_trains_from_the_import",
    ".venv/bin/torchrun --nproc_per_node 2 --no-python .venv/bin/lamm-eval benchmark=shapes_ppl "
    "checkpoint=runs/quickstart-prefix/<time>": "tests/test_bench_eval.py::test_two_processes_equal_one",
}

# console script -> texts its --help must show (what the README promises about it)
HELP = {
    "lamm": ["registry", "env", "demo", "synth", "recipes"],
    "lamm recipes": ["list", "show", "cp", "validate"],
    "lamm recipes validate": ["--trust-recipe", "--config-dir"],
    "lamm-chat": ["--config-dir", "--stats", "/image PATH", "/video PATH", "/points PATH", "/reset", "/help", "/quit"],
    "lamm-serve": ["--port", "--host", "--api-key", "--max-batch", "--queue-size", "--max-body-mb"],
    "lamm-train": ["experiment: ", "trainer: ", "model/encoder: "],
    "lamm-eval": ["benchmark: ", "checkpoint: "],
    "lamm-eval compare": ["RESULTS", "--out", "--samples", "--seed"],
}


def readme_commands() -> list[str]:
    """Every command line of the README's ```bash blocks, trailing `# comment` removed."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def argv_of(command: str) -> list[str]:
    """The command's argv with `.venv/bin/` pointing at this interpreter's venv."""
    return [str(BIN / a.removeprefix(".venv/bin/")) if a.startswith(".venv/bin/") else a for a in shlex.split(command)]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}


def test_the_two_commands_stay_at_the_top() -> None:
    assert readme_commands()[:2] == [
        "bash scripts/setup.sh && .venv/bin/lamm-train experiment=quickstart",
        "bash scripts/setup.sh && .venv/bin/pytest -q",
    ]


def test_every_readme_command_is_run_or_mapped() -> None:
    commands = set(readme_commands())
    assert not RUN.keys() & COVERED_BY.keys()
    unexercised = commands - RUN.keys() - COVERED_BY.keys()
    assert not unexercised, f"README commands neither run nor mapped in tests/test_readme.py: {sorted(unexercised)}"
    stale = (RUN.keys() | COVERED_BY.keys()) - commands
    assert not stale, f"no longer in README.md: {sorted(stale)}"


@pytest.mark.parametrize("command", sorted(COVERED_BY))
def test_mapped_command_names_an_existing_test(command: str) -> None:
    path, name = COVERED_BY[command].split("::")
    assert re.search(rf"^def {re.escape(name)}\(", (REPO / path).read_text(), flags=re.M), COVERED_BY[command]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("command", list(RUN))  # in order: cp before validate and the file's --cfg job
def test_cheap_command_runs(command: str, workdir: Path) -> None:
    result = subprocess.run(argv_of(command), cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{out[-3000:]}"
    assert RUN[command] in out, f"{command}: expected {RUN[command]!r} in its output:\n{out[-3000:]}"


@pytest.mark.parametrize("script", list(HELP))
def test_help_shows_what_the_readme_documents(script: str) -> None:
    result = subprocess.run(argv_of(f".venv/bin/{script} --help"), cwd=REPO, env=clean_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    missing = [text for text in HELP[script] if text not in result.stdout]
    assert not missing, f"{script} --help lacks {missing}"


def test_chat_commands_in_the_readme_match_lamm_chat() -> None:
    """The README's chat table lists exactly the slash commands lamm-chat knows."""
    help_text = subprocess.run(argv_of(".venv/bin/lamm-chat --help"), capture_output=True, text=True, timeout=60,
                               env=clean_env()).stdout
    known = set(re.findall(r"^\s+(/\w+)", help_text.split("commands:", 1)[1], flags=re.M))
    section = README.read_text().split("## Chat", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(/\w+)", section, flags=re.M))
    assert known and documented == known, (documented, known)


def github_anchors(markdown: str) -> set[str]:
    """The `#anchor` of every heading, as GitHub makes them (lower case, punctuation dropped, spaces -> '-')."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", strip_code(markdown), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:  # repeated headings get -1, -2, ...
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def strip_code(markdown: str) -> str:
    """The text outside fenced code blocks and indented (4-space) blocks."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.sub(r"^    .*$", "", text, flags=re.M)


MARKDOWN = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md",
            REPO / "datasets" / "README.md"]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    """Every relative link of the README and the docs resolves, `#anchor` included (e.g. docs/results.md#quickstart)."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", strip_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_keeps_the_manual_and_leaves_the_measurements_to_docs_results() -> None:
    """The README's sections are the user's manual; measured tables live in docs/results.md."""
    headings = re.findall(r"^## (.+)$", strip_code(README.read_text(encoding="utf-8")), flags=re.M)
    for needed in ("What to expect", "Concepts", "Command line", "Extending", "Many GPUs", "Sharing a recipe",
                   "Chat", "Layout"):
        assert any(h.startswith(needed) for h in headings), f"README.md lacks its '## {needed}' section"
    assert "Measured" not in headings, "measurements belong in docs/results.md"
    expect = README.read_text(encoding="utf-8").split("## What to expect", 1)[1].split("\n## ", 1)[0]
    assert "docs/results.md" in expect and len(expect.strip().splitlines()) <= 8
