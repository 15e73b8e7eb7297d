"""Recipes: the experiment and benchmark YAML files people share.

`catalog` lists, shows and copies them; `validate` checks one without building anything; `safety`
refuses YAML that could run code; `staging` makes a file from anywhere loadable by Hydra; `launch`
applies all of it to lamm-train / lamm-eval command lines; `hashing` records which exact YAML a
run or report came from. Kept free of heavy imports: the CLIs import it before Hydra starts.
"""
