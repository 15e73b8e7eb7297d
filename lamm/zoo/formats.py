"""The built-in checkpoint formats: importing this module registers every importer and exporter."""
from lamm.zoo import blip2  # noqa: F401  (registration)
from lamm.zoo import idefics  # noqa: F401  (hf_idefics)
from lamm.zoo import lamm_delta  # noqa: F401  (registration)
from lamm.zoo import llava, llava_export, llava_original  # noqa: F401  (registration)
from lamm.zoo import mmgpt  # noqa: F401  (registers "mmgpt")
from lamm.zoo import openflamingo  # noqa: F401  (openflamingo)
from lamm.zoo import openflamingo  # noqa: F401  (registers "openflamingo")
