"""The compass: the instruments a model is placed with (the project's own and the Political Compass test,
instruments.py, data/), how their propositions are asked (prompts.py), and the rows an answer is stored as
(schema.py), from which the report is computed without a model."""
