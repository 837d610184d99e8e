"""The embedded default's model and the synthetic world it learns: the tiny model the project builds (tiny.py: a
Llama-shaped model and its tokenizer, random or warmed) and its warm-up (warm.py) on posts like the sample corpus's
(politune/corpus), scored, paired and answered as the contracts' prompts ask. Above the contracts it teaches, beside
the stages (which load the built model by its folder, models/); preparation (prepare.py) and `politune model
build-tiny` build it."""
