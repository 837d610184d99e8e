"""What two stages share, below every stage: the annotator (its prompts, parsing, row schema and scoring engines:
annotate, synthesize's consistency check and the tiny model's warm-up use it), the compass (the instruments, their
prompts and the answer schema: evaluate, report, plan and the warm-up), and the preference pairs' prompts
(synthesize, plan and the warm-up). A stage imports contracts, engines, models, storage and config; never another
stage (`lint-imports` checks it: pyproject's importlinter contracts)."""
