"""Judge-scored benchmarks: pluggable judges (`client`: an OpenAI-compatible server or a local transformers
model), the request cache kept in the run folder (`cache`), the cached concurrent loop (`engine`), the judge
options (`options`) and each benchmark's verbatim protocol text and reply parsing (`llava_bench`, `mmvet`).

Nothing is imported here: the task modules import `eval.judge.options` while `eval.tasks` is being set up,
and `engine`/`client` import `eval.tasks.base`.
"""
