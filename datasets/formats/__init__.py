"""One module per instruction-data format, each registering its factory in `lamm.registry.DATASETS`."""
from lamm.datasets.formats import interleaved, jsonl_shards, lamm_json, mmgpt, webdataset_shards  # noqa: F401  (registration)
