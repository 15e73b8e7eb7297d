"""Token ids of quickstart-style samples with template segments merged (since 2026-12-03) vs tokenized one
by one (before): which templates the processor change moved."""
from lamm.datasets.processor import merge_same_labels
from lamm.datasets.sample import MediaRef, Sample, Turn
from lamm.datasets.templates import get_template
from lamm.llm.loaders import load_smollm2_135m

tok = load_smollm2_135m().tokenizer
questions = ["What colour is the shape?", "What shape is it?", "How many shapes are there?", "Is it on the left?"]
answers = ["red", "circle", "two", "yes"]
same = total = 0
for template_name, system in (("chat", "empty"), ("vicuna_lamm", None)):
    template = get_template(template_name, system_prompt=system)
    for n in range(1, 5):
        turns = []
        for q, a in zip(questions[:n], answers[:n]):
            turns += [Turn("user", ("<image>\n" if not turns else "") + q), Turn("assistant", a)]
        sample = Sample(id="s", turns=turns, media=[MediaRef("image", "x.png", "image 1")], source="t")
        segs = template.render(sample, tok)
        old = [i for s in segs for i in tok(s.text, add_special_tokens=False).input_ids]
        new = [i for s in merge_same_labels(segs) for i in tok(s.text, add_special_tokens=False).input_ids]
        same += old == new
        print(template_name, n, old == new)
        total += 1
print(f"{same}/{total} samples tokenize identically")
