"""AlpacaEval 1.0 / 2.0: win rate of the model's outputs against reference outputs, by a configurable judge.

Steps: the 805 instructions and the reference outputs (1.0: ``text_davinci_003``; 2.0: ``gpt4_1106_preview``)
come from ``<data_dir>/alpaca_eval/<reference>/model_outputs.json`` offline, else from the Hub through
``alpaca_eval``'s own dataset loading. The model answers each instruction with the training template
(``render_prompt``, greedy). ``alpaca_eval``'s pairwise annotator (its prompt template for the version, its
seeded random swap of the two outputs, its parser) asks the judge (:mod:`.judges`) which
output is better, and ``alpaca_eval.metrics`` turns the preferences into a win rate and its standard error.
The length-controlled win rate needs a file from the Hub; it is reported only when that works.

Options (``evaluation.alpaca_eval.options``):

- ``version``: 1 (default) or 2.
- ``annotator``: an ``alpaca_eval`` evaluator config name (default ``alpaca_eval_gpt4`` for 1.0,
  ``weighted_alpaca_eval_gpt4_turbo`` for 2.0; for a ``local_hf`` judge ``weighted_alpaca_eval_gpt4_turbo``
  for both, see ``judging.LOCAL_JUDGE_ANNOTATOR``); the judge replaces its model. Annotators with ``ranking_parser`` or
  ``logprob_parser`` work with every judge; others only with an OpenAI-compatible one.
- ``max_new_tokens`` (default 512): generation budget per answer; output length matters to AlpacaEval.
- ``cache_dir``: where generations and judge verdicts are cached (default ``<out_dir>/alpaca_eval``).
- ``both_orders`` (default true, for every judge): judge each pair in both orders and average, cancelling the
  judge's position bias (doubles judge cost); false: ``alpaca_eval``'s seeded random order. The result's
  ``judge_prefers_first_shown`` measures the bias (0.5 = none); ``judge_position_biased`` is true when one
  position wins >= 90% of the decided verdicts (:data:`.metrics.POSITION_BIAS_LIMIT`): the win rate is then not a
  measurement of the outputs, and the report says so instead of interpreting it.
- ``guided_choice`` (default false): send vLLM's ``guided_choice`` to an OpenAI-compatible judge server.
- ``judge_concurrency`` (default 4): parallel requests to an OpenAI-compatible judge.
- ``seed`` (default 123): which instructions a ``limit`` picks (``alpaca_eval``'s own ``max_instances`` seed).

Modules: :mod:`.runner` (the benchmark: reference outputs, the model's answers, the result record),
:mod:`.judging` (``alpaca_eval``'s annotators asking our judges, both orders, cached verdicts),
:mod:`.judges` (the judges themselves: a local model or an OpenAI-compatible endpoint) and :mod:`.metrics`
(win rate, position bias, lengths, the leaderboard CSV).
"""
