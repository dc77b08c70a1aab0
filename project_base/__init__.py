"""The small base below ``vqa_llm`` and ``training``: what both need and neither owns.

* :mod:`project_base.paths`: the repository root, and paths as the files the project commits write them;
* :mod:`project_base.errors`: the user-error types whose message says what to do;
* :mod:`project_base.output_folder`: the check of an output folder before any work starts;
* :mod:`project_base.hub_probe`: is a Hub model cached, does the Hub answer, fail fast when it does not.

It imports none of the project's packages (an import-linter contract in pyproject.toml).
"""
