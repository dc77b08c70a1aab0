"""Per-stage latency of the VQA+LLM pipeline: a first question on an image, then a second one on the same image.

Run (heavy: ~5 GB RAM, a few minutes on 2 CPU cores; no network):

    .venv/bin/python bench/pipeline_latency.py                 # 2 measured rounds after a warm-up round
    .venv/bin/python bench/pipeline_latency.py --rounds 3 --threads 2 --llm-tokens 8

Models are built at their REAL sizes with random weights (nothing is downloaded):
  * VLE: the ``vle-base-for-vqa`` config recorded in ``tests/fixtures/vle_reference/manifests`` (576 px, CLIP ViT-B/16,
    DeBERTa-v3-base, 6 fusion layers), answer vocabulary cut to ``--labels``; a small sentencepiece tokenizer.
  * BLIP: ``BlipConfig()`` defaults (= blip-image-captioning-base sizes, 384 px), ``--caption-beams`` beams and
    exactly ``--caption-tokens`` new tokens (random weights never stop early; real captions are ~10 tokens).
  * LLM: a Qwen2.5-0.5B-shaped ``Qwen2ForCausalLM`` (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
    4864, vocabulary 151936) with a word-level tokenizer and a ChatML template, ``--llm-tokens`` new tokens.

Printed: a table of per-stage seconds (median over rounds) for question 1 (new image) and question 2 (same
image: caption and image encoding come from the cache), and the ratio
``(caption + VQA of question 2) / (caption + VQA of question 1)`` where VQA = vision_encode + vqa_fusion.
Target: <= 35 %. The same ratio without the caption (VQA alone) is printed too: VLE's fusion layers carry the
1297 image tokens through 6 co-attention layers for every question, so they are the floor of question 2.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
import torch
from random_models import CORPUS, blip_processor, chat_tokenizer, photo
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    CLIPImageProcessorPil,
    DebertaV2Tokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from captioner import BlipCaptioner
from llm import TransformersChatLLM
from vle import VLEConfig, VLEForVQA
from vle.processing_vle import VLEProcessor
from vqa_llm.pipeline import VQALLMPipeline
from vqa_llm.result import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]

MANIFEST = REPO_ROOT / "tests" / "fixtures" / "vle_reference" / "manifests" / "vle-base-for-vqa.json"
QUESTIONS = ("What is the man holding in his hand?", "How many dogs are on the grass?")


def build_vle(labels: int, workdir: Path) -> tuple[VLEForVQA, VLEProcessor]:
    """vle-base-for-vqa sizes, random weights; a sentencepiece tokenizer trained here; 576 px CLIP processing."""
    config = json.loads(MANIFEST.read_text())["config_json_as_saved_by_config_save_pretrained"]
    config["id2label"] = {str(i): f"answer {i}" for i in range(labels)}
    config["label2id"] = {f"answer {i}": i for i in range(labels)}
    model = VLEForVQA(VLEConfig(**config)).eval()
    size = model.config.vision_config.image_size
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buffer, vocab_size=120, model_type="unigram", pad_id=0,
        bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    (workdir / "spm.model").write_bytes(buffer.getvalue())
    tokenizer = DebertaV2Tokenizer(vocab_file=str(workdir / "spm.model"), bos_token="[CLS]", cls_token="[CLS]",
                                   eos_token="[SEP]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
                                   mask_token="[MASK]")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model, VLEProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_blip(beams: int, tokens: int) -> BlipCaptioner:
    """blip-image-captioning-base sizes (BlipConfig defaults), random weights, a BERT-layout vocabulary."""
    config = BlipConfig()
    model = BlipForConditionalGeneration(config).eval()
    return BlipCaptioner(model, blip_processor(config), "blip-base-random", num_beams=beams, max_new_tokens=tokens,
                         min_new_tokens=tokens)


def build_llm() -> TransformersChatLLM:
    """A Qwen2.5-0.5B-shaped chat LM with random weights and a word-level ChatML tokenizer."""
    config = Qwen2Config(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                         tie_word_embeddings=True)
    tokenizer = chat_tokenizer(config.vocab_size)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = Qwen2ForCausalLM(config).eval()
    return TransformersChatLLM(model, tokenizer, "qwen2.5-0.5b-shaped-random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--labels", type=int, default=3129, help="VQA answer vocabulary size")
    parser.add_argument("--caption-beams", type=int, default=3, help="BLIP beams (BlipCaptioner default: 3)")
    parser.add_argument("--caption-tokens", type=int, default=10, help="exact caption length in tokens")
    parser.add_argument("--llm-tokens", type=int, default=8, help="LLM new tokens")
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        vle_model, processor = build_vle(args.labels, Path(workdir))
    captioner = build_blip(args.caption_beams, args.caption_tokens)
    llm = None if args.no_llm else build_llm()
    pipe = VQALLMPipeline(vle_model, processor, captioner, llm, llm_timeout=600)
    print(f"built models in {time.perf_counter() - started:.1f} s; torch threads: {torch.get_num_threads()}")

    opts = {"max_new_tokens": args.llm_tokens}
    first: dict[str, list[float]] = {s: [] for s in STAGES}
    second: dict[str, list[float]] = {s: [] for s in STAGES}
    for round_no in range(args.rounds + 1):
        image = photo(round_no)
        r1 = pipe.run(image, QUESTIONS[0], use_llm=llm is not None, **opts)
        r2 = pipe.run(image, QUESTIONS[1], use_llm=llm is not None, **opts)
        assert not r1.cache_hit and r2.cache_hit, "the second question must hit the per-image cache"
        label = "warm-up" if round_no == 0 else f"round {round_no}"
        print(f"{label}: q1 total {r1.timings['total']:.2f} s, q2 total {r2.timings['total']:.2f} s")
        if round_no == 0:
            continue
        for stage in STAGES:
            first[stage].append(r1.timings[stage])
            second[stage].append(r2.timings[stage])

    med1 = {s: statistics.median(v) for s, v in first.items()}
    med2 = {s: statistics.median(v) for s, v in second.items()}
    print(f"\nmedian over {args.rounds} round(s), seconds")
    print(f"{'stage':<14}{'question 1':>12}{'question 2':>12}")
    for stage in STAGES:
        print(f"{stage:<14}{med1[stage]:>12.3f}{med2[stage]:>12.3f}")
    image_side = ("caption", "vision_encode", "vqa_fusion")
    cost1 = sum(med1[s] for s in image_side)
    cost2 = sum(med2[s] for s in image_side)
    print(f"\ncaption + VQA: question 1 {cost1:.3f} s, question 2 {cost2:.3f} s")
    print(f"ratio (caption + VQA of question 2) / (that of question 1): {100 * cost2 / cost1:.1f} %  (target <= 35 %)")
    vqa1 = med1["vision_encode"] + med1["vqa_fusion"]
    vqa2 = med2["vision_encode"] + med2["vqa_fusion"]
    print(f"VQA alone (vision_encode + vqa_fusion): {100 * vqa2 / vqa1:.1f} %  "
          "(the caption cache only adds to the gain)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GiB")


if __name__ == "__main__":
    main()
