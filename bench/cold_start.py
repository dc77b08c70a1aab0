"""Cold-start benchmark: wall time of one ``python -m vqa_llm ask ... --json`` process, start to exit.

    .venv/bin/python bench/cold_start.py                             # this checkout, GGUF cache on and off
    git worktree add /tmp/old bba915a
    .venv/bin/python bench/cold_start.py --baseline /tmp/old --runs 3  # ... and an older checkout, side by side

Each variant runs the same command in a fresh Python process (same interpreter): ``cached`` is this checkout
with the GGUF cache (``VQA_LLM_CACHE``, default a temporary folder of this run), ``uncached`` this checkout with
``VQA_LLM_CACHE=off`` (GGUF de-quantised at every start, as before the cache), ``baseline`` the checkout given by
``--baseline``. One untimed warm-up run per variant first (it fills the GGUF cache and the OS file cache, so
that every timed run is a start of an installed app, not a first start); then ``--runs`` rounds, the variants
interleaved within each round so that a busy machine slows them alike. Printed: a table of median and min
wall seconds per variant and each variant's ratio to the baseline (or to ``uncached``); the last line is a JSON
object with the medians (``<variant>_s``) and ratios (``<variant>_vs_<reference>``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ASK = ("assets/examples/easyvqa-test-439.png", "what shape does the image contain?", "--profile", "bundled",
               "--json")


def run_once(checkout: Path, ask_args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``python -m vqa_llm ask ASK_ARGS`` run in ``checkout``; RuntimeError if it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vqa_llm", "ask", *ask_args], cwd=checkout, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode} in {checkout}:\n{done.stderr[-3000:]}")
    json.loads(done.stdout)  # a complete answer came back
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout of this project to compare against")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--cache", type=Path, help="GGUF cache folder for 'cached' (default: a temporary one)")
    parser.add_argument("--variants", nargs="+", default=["cached", "uncached", "baseline"],
                        choices=["cached", "uncached", "baseline"])
    parser.add_argument("ask_args", nargs="*", help=f"arguments after 'ask' (default: {' '.join(DEFAULT_ASK)})")
    args = parser.parse_args()
    ask_args = args.ask_args or list(DEFAULT_ASK)
    variants = [v for v in args.variants if v != "baseline" or args.baseline]

    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with tempfile.TemporaryDirectory(prefix="cold-start-cache-") as tmp:
        cache = str(args.cache or tmp)
        setups = {
            "cached": (REPO_ROOT, {**base_env, "VQA_LLM_CACHE": cache}),
            "uncached": (REPO_ROOT, {**base_env, "VQA_LLM_CACHE": "off"}),
            "baseline": (args.baseline, {**base_env, "VQA_LLM_CACHE": "off"}),
        }
        print(f"command: python -m vqa_llm ask {' '.join(ask_args)}; {os.cpu_count()} CPUs; variants {variants}",
              flush=True)
        for variant in variants:
            checkout, env = setups[variant]
            print(f"  warm-up {variant}: {run_once(checkout, ask_args, env):.1f} s", flush=True)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for round_index in range(args.runs):
            for variant in variants:
                checkout, env = setups[variant]
                times[variant].append(run_once(checkout, ask_args, env))
            print(f"  round {round_index + 1}: " + ", ".join(f"{v} {times[v][-1]:.1f} s" for v in variants), flush=True)

    reference = "baseline" if "baseline" in variants else "uncached" if "uncached" in variants else None
    medians = {v: statistics.median(t) for v, t in times.items()}
    print(f"\n| variant | median s | min s | vs {reference or '-'} |")
    print("|---|---:|---:|---:|")
    summary: dict[str, float] = {}
    for variant in variants:
        ratio = medians[variant] / medians[reference] if reference else 1.0
        print(f"| {variant} | {medians[variant]:.2f} | {min(times[variant]):.2f} | {ratio:.2f}x |")
        summary[f"{variant}_s"] = round(medians[variant], 3)
        if reference and variant != reference:
            summary[f"{variant}_vs_{reference}"] = round(ratio, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
