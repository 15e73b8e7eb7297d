"""Helpers for testing evaluations: the worker of the multi-process test (a spawned worker must be importable)
and tiny copies of the official dataset layouts (`write_official_fixture`)."""
from __future__ import annotations

import json
import os
from typing import Any


def distributed_eval_worker(rank: int, world: int, port: int, model_cfg: dict, recipe: dict, out: str,
                            batch_size: int = 4, seed: int = 0) -> None:
    """One rank: join a gloo group, build the model (seeded), evaluate, write its returned results."""
    import torch

    from lamm.benchmarks.evaluator import evaluate
    from lamm.build import build_model

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        model = build_model(model_cfg).eval()
        res: Any = evaluate(model, recipe, out, batch_size=batch_size)
        with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as fh:
            json.dump(res, fh)
        torch.distributed.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        torch.distributed.destroy_process_group()


# -- tiny copies of the official dataset layouts (scenarios in captions, vqa, classification, mme, mmmu) --

OFFICIAL_KINDS = ("coco_captions", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "imagenet", "hateful_memes",
                  "mme", "mmmu")


def _pil(seed: int, size: int = 16) -> Any:
    """A small image whose colours depend on `seed`: a background and a different top-left corner."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), dtype=np.uint8) + rng.integers(0, 256, size=3, dtype=np.uint8)
    arr[: size // 2, : size // 2] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return Image.fromarray(arr)


def _image(path: str, seed: int) -> None:
    """`_pil(seed)` saved at `path` (format from the suffix: .jpg, .JPEG, .png)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _pil(seed).save(path)


def _png_bytes(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    _pil(seed).save(buf, format="PNG")
    return buf.getvalue()


def _dump(path: "os.PathLike[str] | str", obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)


def _karpathy(root: str, dataset: str, n: int) -> None:
    splits = ["test"] * n + ["train"] * n + ["val"] + (["restval"] if dataset == "coco" else [])
    images = []
    for i, split in enumerate(splits):
        folder = ("val2014" if split != "train" else "train2014") if dataset == "coco" else ""
        filename = f"COCO_{folder}_{i:012d}.jpg" if dataset == "coco" else f"{1000 + i}.jpg"
        _image(os.path.join(root, folder if dataset == "coco" else "flickr30k-images", filename), i)
        sents = [f"a picture number {i} of a {c} thing" for c in ("red", "blue")]
        img = {"filename": filename, "split": split, "imgid": i, "sentids": [2 * i, 2 * i + 1],
               "sentences": [{"tokens": s.split(), "raw": s + ".", "imgid": i, "sentid": 2 * i + j}
                             for j, s in enumerate(sents)]}
        if dataset == "coco":
            img.update(filepath=folder, cocoid=100 + i)
        images.append(img)
    _dump(os.path.join(root, f"dataset_{dataset}.json"), {"images": images, "dataset": dataset})


VQA_ANSWERS = [("Is it red?", "yes/no", ["yes"] * 7 + ["no"] * 3),
               ("How many things are there?", "number", ["2"] * 4 + ["two"] * 2 + ["3"] * 4),
               ("What is it?", "other", ["a ball", "ball", "ball", "toy", "toy", "sphere", "ball", "ball.", "orb", "Ball"])]


def _coco_vqa(root: str, questions: str, annotations: str, n: int) -> None:
    for split, count in (("val2014", n + 1), ("train2014", n)):
        qs, anns = [], []
        for i in range(count):
            image_id, qid = 10 + i // 2, 1000 * (10 + i // 2) + i
            _image(os.path.join(root, split, f"COCO_{split}_{image_id:012d}.jpg"), image_id)
            question, kind, answers = VQA_ANSWERS[i % len(VQA_ANSWERS)]
            qs.append({"image_id": image_id, "question": question, "question_id": qid})
            anns.append({"question_id": qid, "image_id": image_id, "answer_type": kind, "question_type": "what",
                         "multiple_choice_answer": answers[0],
                         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                     for j, a in enumerate(answers)]})
        _dump(os.path.join(root, questions.format(split=split)), {"data_subtype": split, "questions": qs})
        _dump(os.path.join(root, annotations.format(split=split)), {"data_subtype": split, "annotations": anns})


def _textvqa(root: str, n: int) -> None:
    for split in ("val", "train"):
        data, ocr = [], []
        for i in range(n):
            image_id = f"{split}{i:04d}abcdef"
            _image(os.path.join(root, "train_images", f"{image_id}.jpg"), 300 + i + (50 if split == "train" else 0))
            data.append({"question": f"What does sign {i} say?", "image_id": image_id, "question_id": 500 + i,
                         "answers": ["stop"] * 6 + ["stop sign"] * 4, "set_name": split, "image_classes": []})
            ocr.append({"image_id": image_id, "ocr_tokens": ["STOP", f"{i}"]})
        _dump(os.path.join(root, f"TextVQA_0.5.1_{split}.json"),
              {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
        _dump(os.path.join(root, f"TextVQA_Rosetta_OCR_v0.2_{split}.json"), {"data": ocr})


def _vizwiz(root: str, n: int) -> None:
    for split in ("val", "train"):
        rows = []
        for i in range(n):
            image = f"VizWiz_{split}_{i:08d}.jpg"
            _image(os.path.join(root, split, image), 400 + i + (50 if split == "train" else 0))
            if i % 2:
                rows.append({"image": image, "question": "What is this?", "answer_type": "unanswerable",
                             "answerable": 0, "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 8
                             + [{"answer": "blurry", "answer_confidence": "no"}] * 2})
            else:
                rows.append({"image": image, "question": "What colour is this shirt?", "answer_type": "other",
                             "answerable": 1, "answers": [{"answer": "blue", "answer_confidence": "yes"}] * 10})
        _dump(os.path.join(root, "Annotations", f"{split}.json"), rows)


IMAGENET_CLASSES = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
                    "n01484850": "great white shark, white shark"}


def _imagenet(root: str, n: int) -> None:
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w", encoding="utf-8") as fh:
        fh.write("".join(f"{w} {name}\n" for w, name in IMAGENET_CLASSES.items()))
    for split in ("val", "train"):
        for c, wnid in enumerate(IMAGENET_CLASSES):
            for i in range(n if split == "train" else 1):
                name = f"ILSVRC2012_{split}_{c}{i:07d}.JPEG"
                _image(os.path.join(root, split, wnid, name), 600 + 10 * c + i + (5 if split == "train" else 0))


def _hateful_memes(root: str, n: int) -> None:
    for split, count in (("train", n), ("dev_seen", n), ("test_seen", 2 * n)):
        lines = []
        for i in range(count):
            mid = {"train": 10000, "dev_seen": 20000, "test_seen": 30000}[split] + i
            _image(os.path.join(root, "img", f"{mid:05d}.png"), mid)
            lines.append({"id": mid, "img": f"img/{mid:05d}.png", "label": i % 2, "text": f"meme text {i}"})
        with open(os.path.join(root, f"{split}.jsonl"), "w", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(x) + "\n" for x in lines))


def _mme(root: str, n: int) -> None:
    layouts = {"existence": "flat", "artwork": "split", "commonsense_reasoning": "flat"}
    for c, (category, layout) in enumerate(layouts.items()):
        for i in range(n):
            stem = f"{category[:3]}_{i:03d}"
            images = os.path.join(root, category, "images" if layout == "split" else "")
            texts = os.path.join(root, category, "questions_answer_YN" if layout == "split" else "")
            _image(os.path.join(images, f"{stem}.jpg" if i % 2 == 0 else f"{stem}.png"), 700 + 10 * c + i)
            os.makedirs(texts, exist_ok=True)
            with open(os.path.join(texts, f"{stem}.txt"), "w", encoding="utf-8") as fh:
                fh.write(f"Is there a thing number {i} in this image? Please answer yes or no.\tYes\n"
                         f"Is there a cat number {i} in this image? Please answer yes or no.\tNo\n")


def mmmu_row(sid: str, question: str, options: list[str], answer: str, images: int, seed: int,
             qtype: str = "multiple-choice") -> dict[str, Any]:
    """One row of MMMU's parquet release (options as the text of a Python list, as MMMU stores them)."""
    row: dict[str, Any] = {"id": sid, "question": question, "options": repr(options), "explanation": "",
                           "answer": answer, "img_type": "['Diagrams']", "topic_difficulty": "Easy",
                           "question_type": qtype, "subfield": "Test"}
    for k in range(1, 8):
        row[f"image_{k}"] = {"bytes": _png_bytes(seed + k), "path": f"{sid}_{k}.png"} if k <= images else None
    return row


def write_mmmu_parquet(path: "os.PathLike[str] | str", rows: list[dict[str, Any]]) -> None:
    """Rows written as MMMU's parquet files are (image columns as {bytes, path} structs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([(k, image if k.startswith("image_") else pa.string()) for k in rows[0]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _mmmu(root: str, n: int) -> None:
    art = [mmmu_row("validation_Art_1", "Which painting is older, <image 2> or <image 1>?", ["<image 1>", "<image 2>"],
                    "B", 2, 800),
           mmmu_row("validation_Art_2", "<image 1> What colour dominates?", ["red", "green", "blue", "black"], "C", 1, 810)]
    art += [mmmu_row(f"validation_Art_{3 + i}", "<image 1> Is this art?", ["yes", "no"], "A", 1, 820 + i)
            for i in range(max(0, n - 2))]
    write_mmmu_parquet(os.path.join(root, "Art", "validation-00000-of-00001.parquet"), art)
    write_mmmu_parquet(os.path.join(root, "Art", "dev-00000-of-00001.parquet"),
                       [mmmu_row(f"dev_Art_{i + 1}", "<image 1> Which style?", ["cubism", "baroque"], "A", 1, 830 + i)
                        for i in range(n)])
    write_mmmu_parquet(os.path.join(root, "Math", "validation-00000-of-00001.parquet"),
                       [mmmu_row("validation_Math_1", "<image 1> What is x?", [], "4", 1, 840, qtype="open")])
    write_mmmu_parquet(os.path.join(root, "Math", "dev-00000-of-00001.parquet"),
                       [mmmu_row("dev_Math_1", "<image 1> What is y?", ["1", "2"], "B", 1, 850)])


def write_official_fixture(kind: str, root: "os.PathLike[str] | str", n: int = 2) -> str:
    """A tiny copy of one dataset's official layout in `root` (created), `n` samples per split (about);
    the folder is what the scenario of that name takes as `data_root`."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    writers = {
        "coco_captions": lambda: _karpathy(root, "coco", n),
        "flickr30k": lambda: _karpathy(root, "flickr30k", n),
        "vqav2": lambda: _coco_vqa(root, "v2_OpenEnded_mscoco_{split}_questions.json",
                                   "v2_mscoco_{split}_annotations.json", n),
        "okvqa": lambda: _coco_vqa(root, "OpenEnded_mscoco_{split}_questions.json", "mscoco_{split}_annotations.json", n),
        "textvqa": lambda: _textvqa(root, n),
        "vizwiz": lambda: _vizwiz(root, n),
        "imagenet": lambda: _imagenet(root, n),
        "hateful_memes": lambda: _hateful_memes(root, n),
        "mme": lambda: _mme(root, n),
        "mmmu": lambda: _mmmu(root, n),
    }
    if kind not in writers:
        raise ValueError(f"write_official_fixture: unknown kind {kind!r}; known: {', '.join(OFFICIAL_KINDS)}")
    writers[kind]()
    return root


def write_official_fixtures(root: "os.PathLike[str] | str", n: int = 2) -> dict[str, str]:
    """Every official layout, each in `root/<kind>` (the scenario's registry name); kind -> folder."""
    return {kind: write_official_fixture(kind, os.path.join(str(root), kind), n) for kind in OFFICIAL_KINDS}
