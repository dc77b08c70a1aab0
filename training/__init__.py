"""Every model the project trains, and the bundle build that makes the offline models under ``assets/models/``.

Nothing at run time imports this package: it depends on the runtime packages (vle, captioner, llm, prompts,
vqa_llm), never the other way round.
"""

import importlib.util
import logging
import sys


def _import_bitsandbytes_quietly() -> None:
    """Import bitsandbytes (which transformers' ``TrainingArguments`` and ``Trainer`` import) once, quietly and
    without the Hub.

    Its CPU backend fetches an optional kernel from the Hub through the ``kernels`` package when it is imported:
    where the Hub does not answer that blocks before any fail-fast Hub check of a training command, and where it
    cannot fetch it warns. ``kernels`` hidden during this one import, bitsandbytes keeps its own CPU code and the
    warning is silenced, so every training module can import the Trainer at its top and a mistyped command's
    one-line error comes first. (Only this import: transformers itself must still find ``kernels``.)
    """
    if importlib.util.find_spec("bitsandbytes") is None or "bitsandbytes" in sys.modules:
        return
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    kernels = sys.modules.get("kernels")
    sys.modules["kernels"] = None  # "from kernels import ..." raises ImportError, which bitsandbytes catches
    try:
        import bitsandbytes  # noqa: F401
    finally:
        if kernels is None:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = kernels


_import_bitsandbytes_quietly()
