"""The built-in checkpoint formats: importing this module registers every importer and exporter."""
from lamm.zoo import blip2  # noqa: F401  (hf_blip2)
from lamm.zoo import idefics  # noqa: F401  (hf_idefics)
from lamm.zoo import lamm_delta  # noqa: F401  (lamm)
from lamm.zoo import llava, llava_export, llava_original  # noqa: F401  (hf_llava import and export, llava_original)
from lamm.zoo import mmgpt  # noqa: F401  (mmgpt)
from lamm.zoo import openflamingo  # noqa: F401  (openflamingo)
