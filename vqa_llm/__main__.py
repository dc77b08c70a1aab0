"""``python -m vqa_llm``: see :mod:`vqa_llm.cli`."""

from .cli import main

raise SystemExit(main())
