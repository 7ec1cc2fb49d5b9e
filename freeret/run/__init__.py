"""One run, by what a reader looks for: :mod:`~freeret.run.plan` (the config checked into a Plan, before any data or
weights), :mod:`~freeret.run.inputs` (the data checked with the tokenizer, seeds, the weights, what a suite shares),
:mod:`~freeret.run.stages` (embed, rerank, answer) and :mod:`~freeret.run.report` (the RunResult, the summary line).
:mod:`~freeret.run.pipeline` (``run``) wires them; :mod:`freeret.benchmark` runs it per dataset of a suite."""
