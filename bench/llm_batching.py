"""The bundled LLM's reply time on real refiner prompts: the adapter applied at run time vs folded into the
weights, one chat at a time vs decoded together (continuous batching).

    .venv/bin/python bench/llm_batching.py                      # 32 prompts, batch 16
    .venv/bin/python bench/llm_batching.py --questions 64 --max-batch-size 8

The prompts are what the pipeline sends for easy-VQA test questions (``short`` template, the bundled VLE's
caption and top-5 candidates, one question per image). Each setting loads its own model, answers one prompt to
warm up, then all of them (greedy, at most 32 new tokens); printed: seconds per question and how many replies equal
those of the first setting (today's one-chat-at-a-time path with the adapter applied at run time). The merged copy
is written to the cache on its first use (not timed). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from llm import smollm2_gguf
from llm.llamacpp_backend import LlamaCppChatLLM
from prompts import build_messages
from vqa_llm.pipeline import VQALLMPipeline
from vqa_llm.profiles import BUNDLED_REFINER_DIR, resolve_profile


def refiner_prompts(count: int) -> list[list[dict]]:
    """The ``short`` chats the bundled pipeline builds for ``count`` easy-VQA test questions on different images."""
    import easy_vqa

    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    first: dict[int, str] = {}
    for question, image_id in zip(questions, image_ids):
        first.setdefault(image_id, question)
    pairs = list(first.items())[:count]
    pipeline = VQALLMPipeline.from_profile(resolve_profile("bundled")[0], use_llm=False)
    results = pipeline.run_batch([paths[i] for i, _ in pairs], [q for _, q in pairs], use_llm=False)
    return [build_messages("short", r.caption, r.question, r.candidates, directory=BUNDLED_REFINER_DIR / "templates")
            for r in results]


def timed(llm: LlamaCppChatLLM, chats: list[list[dict]], batched: bool, max_new_tokens: int) -> tuple[float, list]:
    llm.generate(chats[0], max_new_tokens=max_new_tokens)  # warm-up
    began = time.perf_counter()
    if batched:
        replies = llm.generate_batch(chats, max_new_tokens=max_new_tokens)
    else:
        replies = [llm.generate(chat, max_new_tokens=max_new_tokens) for chat in chats]
    return (time.perf_counter() - began) / len(chats), replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    chats = refiner_prompts(args.questions)
    directory, filename = smollm2_gguf()
    path = f"{directory}/{filename}"
    settings = [
        ("adapter at run time, one at a time", dict(merge_adapter=False), False),
        ("adapter merged, one at a time", dict(), False),
        (f"adapter merged, batched ({args.max_batch_size})", dict(max_batch_size=args.max_batch_size), True),
    ]
    rows, reference = [], None
    for name, options, batched in settings:
        llm = LlamaCppChatLLM.from_gguf(path, adapter=BUNDLED_REFINER_DIR, **options)
        seconds, replies = timed(llm, chats, batched, args.max_new_tokens)
        if llm.batcher is not None:
            llm.batcher.close()
        reference = reference if reference is not None else replies
        same = sum(a == b for a, b in zip(replies, reference))
        rows.append({"setting": name, "s_per_question": round(seconds, 3), "same_replies": same})
        print(f"{name:40} {seconds:.3f} s/question  same replies {same}/{len(chats)}", flush=True)
    base = rows[0]["s_per_question"]
    print(json.dumps({"questions": len(chats), "rows": rows,
                      "speedup_merged": round(base / rows[1]["s_per_question"], 3),
                      "speedup_merged_batched": round(base / rows[2]["s_per_question"], 3)}))


if __name__ == "__main__":
    main()
