"""A small load test: concurrent ``gradio_client`` users against the app, through ``bench/load.py``'s functions.

1. In this process, an app whose LLM holds each answer for a moment, ``--concurrency 1 --max-queue 1`` and a
   2-entry image cache; 4 users x 2 questions on 8 different images all start at once. Every request is answered
   or cleanly refused by the full queue (with Gradio's message), none hangs, the server still answers afterwards,
   and the cache never holds more than its bound (it evicted the older images).
2. ``bench/load.py``'s own run: ``python app.py`` with tiny models in a subprocess, 4 users x 2 questions,
   ``--max-queue 1``: the same properties, the server alive at the end (and stopped by the bench after it),
   throughput, latency and peak-RSS figures in the report.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict

import psutil
from gradio_client import Client, handle_file

from llm import ChatLLM
from robustness_testing import QUESTION, pipeline_like, serve_pipeline, tiny_pipeline_fixtures
from script_modules import load_script
from tiny_models import single_thread_fixture
from vqa_llm import ImageCache

CLIENTS, QUESTIONS = 4, 2
CACHE_ENTRIES = 2


bench = load_script("bench/load.py")


class HoldingLLM(ChatLLM):
    """Delegates to a real (tiny) LLM after holding each request for ``hold`` seconds: a busy server."""

    def __init__(self, inner: ChatLLM, hold: float):
        self.inner, self.hold = inner, hold
        self.model_id = inner.model_id
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def _held(self):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.hold)
        with self._lock:
            self.active -= 1

    def _generate(self, messages, opts):
        self._held()
        return self.inner.generate(messages, **asdict(opts))

    def _stream(self, messages, opts):
        self._held()
        yield from self.inner.stream(messages, **asdict(opts))


one_thread = single_thread_fixture()
argv, pipe = tiny_pipeline_fixtures()


def test_concurrent_users_are_answered_or_cleanly_refused_and_the_cache_stays_bounded(pipe, argv):
    llm = HoldingLLM(pipe.llm, hold=0.6)
    busy = pipeline_like(pipe, llm=llm, cache=ImageCache(max_entries=CACHE_ENTRIES))
    jobs = bench.easy_vqa_jobs(CLIENTS, QUESTIONS)
    with serve_pipeline(busy, argv, "--concurrency", "1", "--max-queue", "1") as (_, url):
        outcomes, wall = bench.run_load(url, jobs, timeout=120, answer_args=(3, True, "short", 0, 8))
        report = bench.summarise(outcomes, wall)
        # still serving: a normal question gets its LLM answer
        after = Client(url, verbose=False).predict(handle_file(jobs[0][0][0]), QUESTION, 3, True, "short", 0, 8,
                                                   api_name="/answer")
    assert after["error"] is None and after["llm_reply"] and len(after["candidates"]) == 3

    assert report["requests"] == CLIENTS * QUESTIONS
    assert report["hung"] == 0 and report["error"] == 0, report["messages"]
    assert report["answered"] + report["rejected"] == report["requests"]
    assert report["answered"] >= 1 and report["rejected"] >= 1  # the queue of 1 overflowed, cleanly
    assert all("Queue is full" in o.message for o in outcomes if o.status == "rejected")
    assert report["latency_p50_s"] <= report["latency_p95_s"] and report["throughput_rps"] > 0
    assert llm.most_active == 1  # --concurrency 1: one request at a time reached the models

    stats = busy.cache.stats()
    assert stats.hits + stats.misses == report["answered"] + 1  # one look-up per request that reached the models
    assert stats.entries <= CACHE_ENTRIES and stats.nbytes <= busy.cache.max_bytes
    assert stats.entries + stats.evictions == stats.misses  # every new image went in, the oldest went out
    assert stats.entries == min(CACHE_ENTRIES, stats.misses)


def test_the_load_bench_runs_the_app_in_a_subprocess_and_reports(argv, tmp_path):
    args = bench.build_parser().parse_args([
        "--clients", str(CLIENTS), "--questions", str(QUESTIONS), "--timeout", "120", "--max-new-tokens", "8",
        "--startup-timeout", "300", "--json", str(tmp_path / "report.json"),
        "--", *argv, "--concurrency", "1", "--max-queue", "1"])
    report = bench.run_bench(args)
    bench.print_report(report)

    assert report["ok"] and report["server_alive"]
    assert report["requests"] == CLIENTS * QUESTIONS and report["hung"] == 0 and report["error"] == 0
    assert report["answered"] + report["rejected"] == report["requests"] and report["answered"] >= 1
    assert all("Queue is full" in m for m in report["messages"])
    assert report["throughput_rps"] > 0 and report["latency_p95_s"] >= report["latency_p50_s"] > 0
    assert report["peak_rss_mb"] > 50 and "VmHWM" in report["peak_rss_source"]
    assert report["cache"] is None  # not exposed by the app over HTTP
    # the bench stopped the app it started
    assert not psutil.pid_exists(report["pid"]) or psutil.Process(report["pid"]).status() == psutil.STATUS_ZOMBIE


def test_compare_runs_both_settings_side_by_side(argv, tmp_path, capsys):
    """``--compare``: a fresh app with ``--max-batch-size 1``, then one as given; one visitor alone timed first;
    the summary's last line is JSON with both rows (tiny models: both runs give the same answers)."""
    import json

    code = bench.main(["--compare", "--clients", "2", "--questions", "1", "--single", "1", "--timeout", "120",
                       "--max-new-tokens", "8", "--startup-timeout", "300", "--json", str(tmp_path / "both.json"),
                       "--", *argv])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and last["ok"]
    assert last["baseline_rps"] > 0 and last["batched_rps"] > 0 and last["speedup"] > 0
    assert last["baseline_p95_s"] > 0 and last["batched_p95_s"] > 0 and last["same_answers"] == 1.0
    for run in ("baseline", "batched"):  # a tiny random LLM may stream no text at all: then no first-text time
        first, answer = last[f"{run}_single_first_text_s"], last[f"{run}_single_answer_s"]
        assert answer > 0 and (first is None or 0 < first <= answer)
    saved = json.loads((tmp_path / "both.json").read_text())
    assert saved["summary"] == last and len(saved["baseline"]["outcomes"]) == 2


def test_answer_agreement_and_compare_refusals():
    def report(*answers):
        return {"outcomes": [{"client": 0, "index": i, "status": "answered" if a else "error", "answer": a}
                             for i, a in enumerate(answers)]}

    assert bench.same_answers(report("Yes", "circle", "red"), report("yes ", "square", "red")) == round(2 / 3, 4)
    assert bench.same_answers(report("yes", None), report("yes", "no")) == 1.0  # only requests answered in both
    assert bench.same_answers(report(None), report(None)) is None
    for argv in (["--compare", "--url", "http://127.0.0.1:1/"], ["--compare", "--", "--max-batch-size", "4"]):
        try:
            bench.main(argv)
        except SystemExit as exc:
            assert "--compare" in str(exc) or "max-batch-size" in str(exc)
        else:
            raise AssertionError(f"{argv} was accepted")
