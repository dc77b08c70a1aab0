"""Load test of the web app: N concurrent ``gradio_client`` users, each asking M questions about different images.

    .venv/bin/python bench/load.py                                   # python app.py --profile bundled, 16 x 5
    .venv/bin/python bench/load.py --clients 4 --questions 2 --timeout 60 -- \\
        --profile bundled --vqa-model DIR --captioner DIR --llm DIR --max-queue 2
    .venv/bin/python bench/load.py --url http://127.0.0.1:7860/ --pid 1234   # an app that is already running
    .venv/bin/python bench/load.py --compare                          # --max-batch-size 1 vs the default

Without ``--url`` the app is started as ``python app.py ARGS --port FREE`` in a subprocess (ARGS: what follows
``--``; default ``--profile bundled``), the run waits until it serves, and the app is stopped at the end. Each
client asks ``/answer`` about its own easy-VQA test images (every request a different image), one question at a
time, each bounded by ``--timeout`` seconds. Every request ends as one of:

    answered   the final result came back
    rejected   the queue was full and the server said so (a clean refusal, with its message)
    error      the server answered with an error message (counted against the run)
    hung       no answer within --timeout (counted against the run)

Printed: the counts, wall time, throughput (answered requests per second), p50/p95 latency of answered
requests, the peak RSS of the server process (``VmHWM`` from /proc when readable, else the highest RSS that
psutil sampled), whether the server is still alive and serving, and the image-cache statistics when the app
exposes them (it does not over HTTP: in-process callers pass ``cache_stats``). ``--json PATH`` also writes the
report as JSON. Exit status 0 when every request was answered or cleanly rejected, none hung and the server is
alive at the end; 1 otherwise.

``--compare`` runs the same load twice, each against a fresh app: first with ``--max-batch-size 1`` (one request
at a time, the old behaviour), then with the arguments as given (the default batch size unless they name one).
Before each load, one visitor alone asks ``--single`` questions, timed to the first streamed LLM text and to the
final answer. Both rows are printed side by side, with the share of requests whose parsed LLM answers agree
between the two runs; the last line is JSON: ``{"baseline_rps", "batched_rps", "speedup", "baseline_p95_s",
"batched_p95_s", ...}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_APP_ARGS = ("--profile", "bundled")
STATUSES = ("answered", "rejected", "error", "hung")


@dataclass(frozen=True)
class Outcome:
    """How one request ended (``status`` in :data:`STATUSES`), after how many seconds, and the server's message."""

    client: int
    index: int
    image: str
    status: str
    seconds: float
    message: str = ""
    answer: str | None = None  # the parsed LLM answer (else the VQA answer) of an answered request


# --------------------------------------------------------------------------------------------- work
def easy_vqa_jobs(clients: int, per_client: int) -> list[list[tuple[str, str]]]:
    """``per_client`` (image path, question) pairs for each client, every pair on a different easy-VQA image."""
    import easy_vqa

    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    first_question: dict[int, str] = {}
    for question, image_id in zip(questions, image_ids):
        first_question.setdefault(image_id, question)
    pairs = [(paths[image_id], question) for image_id, question in first_question.items()]
    needed = clients * per_client
    if needed > len(pairs):
        raise SystemExit(f"{needed} requests need {needed} different images; easy-VQA's test split has {len(pairs)}.")
    return [pairs[c * per_client:(c + 1) * per_client] for c in range(clients)]


def ask_all(url: str, client_index: int, jobs: Sequence[tuple[str, str]], timeout: float, answer_args: Sequence[Any],
            start: threading.Barrier | None = None) -> list[Outcome]:
    """One user: connect, wait for the others (``start``), then ask ``jobs`` one after the other."""
    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # cannot even connect: every request of this user failed
        if start is not None:
            start.abort()
        return [Outcome(client_index, i, image, "error", 0.0, f"cannot connect: {exc}") for i, (image, _) in
                enumerate(jobs)]
    if start is not None:
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass  # another user could not connect; this one goes ahead
    outcomes = []
    for index, (image, question) in enumerate(jobs):
        began = time.perf_counter()
        job = client.submit(handle_file(image), question, *answer_args, api_name="/answer")
        try:
            result = job.result(timeout=timeout)
            ok = isinstance(result, dict) and result.get("stage") == "done" and result.get("candidates")
            status, message = ("answered", "") if ok else ("error", f"unexpected result: {str(result)[:200]}")
            answer = result.get("answer") if ok else None
        except concurrent.futures.TimeoutError:
            answer = None
            job.cancel()
            status, message = "hung", f"no answer within {timeout:g} s"
        except QueueError as exc:
            status, message, answer = "rejected", str(exc), None
        except AppError as exc:
            status, message, answer = "error", str(exc), None
        except Exception as exc:  # a broken connection, a protocol error: the server did not answer properly
            status, message, answer = "error", f"{type(exc).__name__}: {exc}", None
        outcomes.append(Outcome(client_index, index, image, status, time.perf_counter() - began, message,
                                answer if status == "answered" else None))
    return outcomes


def one_visitor(url: str, jobs: Sequence[tuple[str, str]], timeout: float,
                answer_args: Sequence[Any]) -> list[tuple[float | None, float]]:
    """One visitor alone asks ``jobs`` one after the other; per question (seconds to the first streamed LLM text,
    seconds to the final answer). The job is polled every 10 ms, so the first figure is that precise."""
    client = Client(url, verbose=False)
    timings = []
    for image, question in jobs:
        began = time.perf_counter()
        job = client.submit(handle_file(image), question, *answer_args, api_name="/answer")
        first = None
        while not job.done():
            if first is None and any(isinstance(o, dict) and o.get("stage") == "llm" for o in job.outputs()):
                first = time.perf_counter() - began
            if time.perf_counter() - began > timeout:
                job.cancel()
                raise RuntimeError(f"one visitor alone got no answer within {timeout:g} s")
            time.sleep(0.01)
        job.result()
        timings.append((first, time.perf_counter() - began))
    return timings


def run_load(url: str, jobs: Sequence[Sequence[tuple[str, str]]], timeout: float,
             answer_args: Sequence[Any] = (5, True, "short", 0, 32)) -> tuple[list[Outcome], float]:
    """Run one thread per client (all start together); return every outcome and the wall time in seconds.

    ``answer_args`` follow the image and the question in the ``/answer`` call: top_k, use_llm, template,
    temperature, max_new_tokens.
    """
    start = threading.Barrier(len(jobs) + 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(ask_all, url, c, client_jobs, timeout, answer_args, start)
                   for c, client_jobs in enumerate(jobs)]
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass  # a client could not connect; the others go ahead
        began = time.perf_counter()
        outcomes = [outcome for future in futures for outcome in future.result()]
    return outcomes, time.perf_counter() - began


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarise(outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """Counts per status, throughput and latency figures of a run."""
    counts = Counter(o.status for o in outcomes)
    answered = [o.seconds for o in outcomes if o.status == "answered"]
    return {
        "requests": len(outcomes),
        **{status: counts.get(status, 0) for status in STATUSES},
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(len(answered) / wall_s, 3) if wall_s > 0 else None,
        "latency_p50_s": _round(percentile(answered, 50)),
        "latency_p95_s": _round(percentile(answered, 95)),
        "latency_mean_s": _round(statistics.fmean(answered)) if answered else None,
        "messages": sorted({o.message for o in outcomes if o.status != "answered"}),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ------------------------------------------------------------------------------------------ memory
def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (``VmHWM``) of ``pid`` in MiB from /proc; None where /proc has no such field."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssWatcher:
    """Samples the RSS of a process (and its children) with psutil in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid = pid
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watcher", daemon=True)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            process = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
            except psutil.Error:
                return
            self.peak_mb = max(self.peak_mb or 0.0, rss / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def peak_rss(pid: int | None, watcher: RssWatcher | None) -> tuple[float | None, str]:
    """(peak RSS in MiB, where the figure comes from)."""
    if pid is None:
        return None, "unknown (no --pid given)"
    hwm = vm_hwm_mb(pid)
    if hwm is not None:
        return round(hwm, 1), f"/proc/{pid}/status VmHWM"
    if watcher is not None and watcher.peak_mb is not None:
        return round(watcher.peak_mb, 1), f"psutil RSS sampled every {watcher.interval:g} s"
    return None, "unavailable (no /proc and no psutil)"


# ------------------------------------------------------------------------------------------ the app
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serving(url: str, timeout: float = 5.0) -> bool:
    """Whether the app at ``url`` answers its API description."""
    try:
        return requests.get(f"{url}gradio_api/info", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def start_app(app_args: Sequence[str], log_path: Path, startup_timeout: float) -> tuple[subprocess.Popen, str]:
    """Start ``python app.py APP_ARGS --port FREE`` and wait until it serves; return the process and its URL."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), *app_args, "--port", str(port)],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with status {proc.returncode} while starting:\n"
                               f"{log_path.read_text()[-3000:]}")
        if serving(url, timeout=2):
            return proc, url
        time.sleep(0.5)
    stop_app(proc)
    raise RuntimeError(f"app.py did not serve within {startup_timeout:g} s:\n{log_path.read_text()[-3000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    """Terminate the app (SIGTERM, then SIGKILL after 20 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


# ------------------------------------------------------------------------------------------- report
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n\n")[0],
                                     epilog="Arguments after -- go to app.py (default: --profile bundled).")
    parser.add_argument("--clients", type=int, default=16, help="concurrent users (default: 16)")
    parser.add_argument("--questions", type=int, default=5, help="questions per user (default: 5)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take (default: 300)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="LLM tokens per answer (default: 32)")
    parser.add_argument("--top-k", type=int, default=5, help="VQA candidates per answer (default: 5)")
    parser.add_argument("--no-llm", action="store_true", help="ask for the raw VQA answers only")
    parser.add_argument("--url", help="load an app that is already running at this URL instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the app's process id, for its memory figures")
    parser.add_argument("--startup-timeout", type=float, default=900.0,
                        help="seconds the app may take to load its models (default: 900)")
    parser.add_argument("--json", dest="json_path", help="also write the report to this JSON file")
    parser.add_argument("--compare", action="store_true",
                        help="run the load against --max-batch-size 1 and against the app arguments as given, side "
                        "by side (starts the app twice; not with --url)")
    parser.add_argument("--single", type=int, default=5,
                        help="with --compare: questions one visitor alone asks before each load (default: 5)")
    parser.add_argument("app_args", nargs="*", help="arguments for app.py (after --)")
    return parser


def run_bench(args: argparse.Namespace, cache_stats: Callable[[], Any] | None = None,
              app_args: Sequence[str] | None = None, single: int = 0) -> dict[str, Any]:
    """Start (or use) the app, (optionally) time ``single`` questions of one visitor alone, run the load, check
    the app is still serving; return the report. ``app_args`` replace ``args.app_args``."""
    if args.clients < 1 or args.questions < 1 or args.timeout <= 0:
        raise SystemExit("--clients and --questions must be at least 1 and --timeout positive.")
    jobs = easy_vqa_jobs(args.clients + (1 if single else 0), max(args.questions, single))
    alone = [pair for pair in jobs.pop()][:single] if single else []  # images the load does not use
    jobs = [client_jobs[:args.questions] for client_jobs in jobs]
    answer_args = (args.top_k, not args.no_llm, "short", 0, args.max_new_tokens)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, pid = args.url.rstrip("/") + "/", args.pid
        else:
            app_args = list(app_args if app_args is not None else args.app_args or DEFAULT_APP_ARGS)
            print(f"starting: python app.py {' '.join(app_args)}", flush=True)
            started = time.perf_counter()
            proc, url = start_app(app_args, Path(tmp) / "app.log", args.startup_timeout)
            pid = proc.pid
            print(f"app serving at {url} after {time.perf_counter() - started:.1f} s (pid {pid})", flush=True)
        try:
            with RssWatcher(pid) if pid else contextlib.nullcontext() as watcher:
                timings = one_visitor(url, alone, args.timeout, answer_args) if alone else []
                outcomes, wall = run_load(url, jobs, args.timeout, answer_args)
                alive = (proc is None or proc.poll() is None) and serving(url)
                rss, rss_source = peak_rss(pid, watcher)
        finally:
            if proc is not None:
                stop_app(proc)
    report = {
        "clients": args.clients, "questions_per_client": args.questions, "timeout_s": args.timeout,
        "use_llm": not args.no_llm, "max_new_tokens": args.max_new_tokens, "url": url, "pid": pid,
        **summarise(outcomes, wall),
        "server_alive": alive,
        "peak_rss_mb": rss, "peak_rss_source": rss_source,
        "cache": _as_dict(cache_stats()) if cache_stats else None,
        "single_first_text_s": _round(statistics.median(t[0] for t in timings if t[0] is not None))
        if any(t[0] is not None for t in timings) else None,
        "single_answer_s": _round(statistics.median(t[1] for t in timings)) if timings else None,
        "outcomes": [asdict(o) for o in outcomes],
    }
    report["ok"] = (report["answered"] + report["rejected"] == report["requests"] and report["hung"] == 0
                    and report["server_alive"])
    return report


def _as_dict(stats: Any) -> Any:
    return asdict(stats) if hasattr(stats, "__dataclass_fields__") else stats


def print_report(report: dict[str, Any]) -> None:
    """The report as a few readable lines."""
    print(f"{report['requests']} requests ({report['clients']} clients x {report['questions_per_client']}), "
          f"LLM {'on' if report['use_llm'] else 'off'}, per-request timeout {report['timeout_s']:g} s")
    print("  " + ", ".join(f"{status} {report[status]}" for status in STATUSES))
    print(f"  wall {report['wall_s']:.2f} s, throughput {report['throughput_rps']} answers/s, "
          f"latency p50 {report['latency_p50_s']} s, p95 {report['latency_p95_s']} s")
    print(f"  server alive and serving at the end: {report['server_alive']}")
    print(f"  server peak RSS: {report['peak_rss_mb']} MiB ({report['peak_rss_source']})")
    print(f"  image cache: {report['cache'] if report['cache'] is not None else 'not exposed by the app'}")
    for message in report["messages"]:
        print(f"  message: {message}")
    print("OK" if report["ok"] else "FAILED: some requests hung or failed, or the server is gone")


def same_answers(first: dict[str, Any], second: dict[str, Any]) -> float | None:
    """Share of requests answered in both runs whose answers agree (after trimming and lower-casing)."""
    def answers(report: dict[str, Any]) -> dict[tuple[int, int], str]:
        return {(o["client"], o["index"]): str(o["answer"]).strip().lower() for o in report["outcomes"]
                if o["status"] == "answered" and o["answer"] is not None}

    a, b = answers(first), answers(second)
    both = a.keys() & b.keys()
    return round(sum(a[k] == b[k] for k in both) / len(both), 4) if both else None


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """The load against ``--max-batch-size 1`` and against the app arguments as given; the side-by-side summary."""
    if args.url:
        raise SystemExit("--compare starts the app itself (twice); it cannot use --url.")
    given = list(args.app_args or DEFAULT_APP_ARGS)
    if "--max-batch-size" in given:
        raise SystemExit("--compare sets --max-batch-size 1 for the baseline; name the batch size with "
                         "VQA_LLM_MAX_BATCH_SIZE or leave the default.")
    reports = {}
    for name, app_args in (("baseline", [*given, "--max-batch-size", "1"]), ("batched", given)):
        reports[name] = run_bench(args, app_args=app_args, single=args.single)
        print(f"--- {name}: python app.py {' '.join(app_args)}")
        print_report(reports[name])
    base, new = reports["baseline"], reports["batched"]
    rows = [("throughput (answers/s)", "throughput_rps"), ("latency p50 (s)", "latency_p50_s"),
            ("latency p95 (s)", "latency_p95_s"), ("peak RSS (MiB)", "peak_rss_mb"),
            ("one visitor: first LLM text (s)", "single_first_text_s"),
            ("one visitor: answer (s)", "single_answer_s")]
    print(f"\n{'':34} {'baseline':>10} {'batched':>10} {'ratio':>7}")
    for label, key in rows:
        ratio = new[key] / base[key] if base[key] and new[key] is not None else None
        print(f"{label:34} {base[key]!s:>10} {new[key]!s:>10} {'' if ratio is None else f'{ratio:.2f}':>7}")
    agree = same_answers(base, new)
    print(f"same answers in both runs: {agree}")
    summary = {
        "baseline_rps": base["throughput_rps"], "batched_rps": new["throughput_rps"],
        "speedup": round(new["throughput_rps"] / base["throughput_rps"], 3) if base["throughput_rps"] else None,
        "baseline_p95_s": base["latency_p95_s"], "batched_p95_s": new["latency_p95_s"],
        "baseline_peak_rss_mb": base["peak_rss_mb"], "batched_peak_rss_mb": new["peak_rss_mb"],
        "baseline_single_first_text_s": base["single_first_text_s"],
        "batched_single_first_text_s": new["single_first_text_s"],
        "baseline_single_answer_s": base["single_answer_s"], "batched_single_answer_s": new["single_answer_s"],
        "same_answers": agree, "ok": base["ok"] and new["ok"],
    }
    return {"summary": summary, "baseline": base, "batched": new}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test; 0 when every request was answered or cleanly rejected and the server survived."""
    args = build_parser().parse_args(argv)
    if args.compare:
        result = compare(args)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(result["summary"]))
        return 0 if result["summary"]["ok"] else 1
    report = run_bench(args)
    print_report(report)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
