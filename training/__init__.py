"""Every model the project trains, and the bundle build that makes the offline models under ``assets/models/``.

Nothing at run time imports this package: it depends on the runtime packages (vle, captioner, llm, prompts,
vqa_llm), never the other way round.
"""
