"""Building blocks of the batch evaluator (``python -m vqa_llm.evaluate``).

* :mod:`.data` — which questions a run evaluates: dataset loading and the seeded sample.
* :mod:`.records` — one prediction record per question, scored with the official VQA metric.
* :mod:`.store` — the predictions files: append + fsync, resume after a kill, merge of per-process parts.
* :mod:`.summary` — overall / per answer type / per question type figures rebuilt from the records.
* :mod:`.report` — ``summary.md`` and the accuracy chart.
* :mod:`.runner` — runs the pipeline over batches of questions and writes records as they are made.
"""
