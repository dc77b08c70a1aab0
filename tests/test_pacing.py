"""Streamed updates paced for the page (:mod:`vqa_llm.pacing`): LLM texts thinned in time, nothing lost."""

from vqa_llm import pacing
from vqa_llm.result import VQALLMResult, VQALLMUpdate


def updates(texts):
    result = VQALLMResult(question="q", caption="c", candidates=[("a", 1.0)], template="short", top_k=1, timings={})
    yield VQALLMUpdate("vqa", result)
    for text in texts:
        yield VQALLMUpdate("llm", result, text=text)
    yield VQALLMUpdate("done", result, text=texts[-1])


def test_llm_texts_at_most_one_per_interval_and_nothing_else_dropped(monkeypatch):
    clock = iter([0.00, 0.03, 0.06, 0.11, 0.12, 0.30])  # when each "llm" update arrives
    monkeypatch.setattr(pacing.time, "monotonic", lambda: next(clock))
    texts = ["A", "An", "Ans", "Answ", "Answe", "Answer"]
    out = list(pacing.paced(updates(texts), interval=0.1))
    assert [u.stage for u in out] == ["vqa", "llm", "llm", "llm", "done"]
    assert [u.text for u in out[1:-1]] == ["A", "Answ", "Answer"]  # 0.00, 0.11, 0.30: the others too soon
    assert out[-1].text == "Answer"  # the final update holds the whole reply


def test_interval_zero_keeps_every_update_and_the_default_is_the_module_constant(monkeypatch):
    texts = ["x", "xy", "xyz"]
    assert [u.text for u in pacing.paced(updates(texts), interval=0)][1:-1] == texts
    monkeypatch.setattr(pacing, "STREAM_INTERVAL_S", 3600.0)
    assert [u.stage for u in pacing.paced(updates(texts))] == ["vqa", "llm", "done"]
