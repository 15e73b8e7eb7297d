"""Captioning over Karpathy's split files: COCO (`dataset_coco.json`) and Flickr30k (`dataset_flickr30k.json`).

The file holds `images: [{filename, split, sentences: [{raw}], filepath?, cocoid?, imgid?}]` with
split one of train, restval, val, test. The references of a sample are its `sentences[].raw`;
scored with `cider` (pycocoevalcap). COCO's restval images count as training images (as Karpathy's
split intends), so the COCO support pool is train + restval.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lamm.benchmarks.adapters import ScenarioDataError, load_json
from lamm.benchmarks.base import EvalSample
from lamm.benchmarks.official import OfficialScenario, need, need_text
from lamm.datasets.sample import MediaRef
from lamm.registry import SCENARIOS

CAPTION_QUESTION = "Describe the image in one sentence."
KARPATHY_SPLITS = ("train", "restval", "val", "test")


class KarpathyCaptions(OfficialScenario):
    """One Karpathy split file; images at `<data_root>/<image_dir>/<filepath>/<filename>`."""

    name = "karpathy"
    default_file = "dataset_coco.json"

    def __init__(self, data_root: str, split: str = "test", support_split: str | Sequence[str] = ("train",),
                 annotations: str | None = None, image_dir: str = "", limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, limit)
        for s in [split, *self.support_splits]:
            if s not in KARPATHY_SPLITS:
                raise ValueError(f"scenario {self.name}: split {s!r} is not a Karpathy split "
                                 f"({', '.join(KARPATHY_SPLITS)})")
        self.path = self.data_root / (annotations or self.default_file)
        if not self.path.is_file():
            raise ScenarioDataError(f"scenario {self.name}: file not found: expected {self.path}")
        self.image_dir = self.data_root / image_dir
        self._images: list | None = None

    def _all_images(self) -> list:
        if self._images is None:
            data = load_json(self.path, f"scenario {self.name}")
            self._images = need(data, "images", str(self.path), list)
        return self._images

    def load(self, split: str) -> list[EvalSample]:
        out = []
        for i, img in enumerate(self._all_images()):
            where = f"{self.path} images[{i}]"
            if need_text(img, "split", where) != split:
                continue
            filename = need_text(img, "filename", where)
            sentences = need(img, "sentences", where, list)
            refs = [need_text(s, "raw", f"{where}.sentences[{j}]") for j, s in enumerate(sentences)]
            if not refs:
                raise ScenarioDataError(f"{where}: field 'sentences' is empty (a caption needs references)")
            path = Path(self.image_dir, str(img.get("filepath") or ""), filename)
            sid = str(img.get("cocoid", img.get("imgid", Path(filename).stem)))
            out.append(EvalSample(sid, CAPTION_QUESTION, [], refs, [MediaRef("image", str(path), "filename")],
                                  "caption", {"split": split}))
        return out


@SCENARIOS.register("coco_captions")
class CocoCaptions(KarpathyCaptions):
    """COCO captions, Karpathy split: `<data_root>/dataset_coco.json`, images `<data_root>/<filepath>/<filename>`
    (filepath is train2014 or val2014); evaluated on test, demonstrations from train + restval."""

    name = "coco_captions"
    default_file = "dataset_coco.json"

    def __init__(self, data_root: str, split: str = "test", support_split: str | Sequence[str] = ("train", "restval"),
                 annotations: str | None = None, image_dir: str = "", limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, annotations, image_dir, limit)


@SCENARIOS.register("flickr30k")
class Flickr30kCaptions(KarpathyCaptions):
    """Flickr30k, Karpathy split: `<data_root>/dataset_flickr30k.json`, images `<data_root>/flickr30k-images/<filename>`;
    evaluated on test, demonstrations from train."""

    name = "flickr30k"
    default_file = "dataset_flickr30k.json"

    def __init__(self, data_root: str, split: str = "test", support_split: str | Sequence[str] = ("train",),
                 annotations: str | None = None, image_dir: str = "flickr30k-images", limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, annotations, image_dir, limit)
