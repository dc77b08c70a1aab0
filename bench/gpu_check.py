"""GPU check: the ``base`` profile's model SHAPES with random weights, end to end on one CUDA GPU.

    pip install bitsandbytes                      # once, on the GPU machine (needs a CUDA build of PyTorch)
    python bench/gpu_check.py                     # VLE + BLIP in bf16, the LLM in 4-bit (bitsandbytes)
    python bench/gpu_check.py --llm-precision bf16   # without bitsandbytes

Nothing is downloaded. Three models are built with random weights at the sizes of the ``base`` profile:

* VLE: ``vle-base-for-vqa`` (CLIP ViT-B/16 at 576 px, DeBERTa-v3-base, 6 fusion layers, 3129 answers), from
  ``tests/fixtures/vle_reference/manifests/vle-base-for-vqa.json``; bf16, with a small sentencepiece tokenizer.
* BLIP: ``BlipConfig()`` defaults (= blip-image-captioning-base, 384 px), bf16.
* LLM: a Qwen2.5-1.5B-Instruct-shaped ``Qwen2Config`` saved to a temporary folder with random weights, then
  loaded the way a real checkpoint would be: ``BitsAndBytesConfig(load_in_4bit=True,
  bnb_4bit_compute_dtype=torch.bfloat16)`` with ``device_map="auto"`` (or plain bf16).

They are wired into :class:`vqa_llm.VQALLMPipeline`, which answers a warm-up question, then a question about a
new image and a second question about the same image (caption and image encoding from the cache). Printed:
load time and GPU memory of each model, per-stage timings of both questions, and the peak of
``torch.cuda.max_memory_allocated`` over each question and over the whole run. Random weights give nonsense
answers; this checks that the code runs on CUDA with these shapes and dtypes, and what it costs.

On a machine without CUDA it says so and exits 0. ``--smoke --device cpu --llm-precision bf16`` runs the
same code with tiny shapes on the CPU (a check of the script itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

#: the vle-base-for-vqa config as the original code saves it (the tests' reference data)
MANIFEST = Path("tests") / "fixtures" / "vle_reference" / "manifests" / "vle-base-for-vqa.json"
VQA_LABELS = 3129
#: Qwen/Qwen2.5-1.5B-Instruct sizes
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_theta=1_000_000.0, tie_word_embeddings=True)
#: tiny shapes for --smoke
SMOKE_SIZES = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
QUESTIONS = ("What is the man holding?", "What colour is the bus?", "How many dogs are there?")
BNB_INSTALL = ("bitsandbytes is not installed. On this CUDA machine run:  pip install bitsandbytes  "
               "(it needs a CUDA build of PyTorch), or rerun with --llm-precision bf16.")


# ------------------------------------------------------------------------------------------- memory
class GPUMemory:
    """Reads ``torch.cuda`` memory counters (all zero on the CPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def allocated_mb(self) -> float:
        return torch.cuda.memory_allocated(self.device) / 2**20 if self.cuda else 0.0

    def peak_mb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else 0.0

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------------------- models
def vle_config(smoke: bool) -> tuple[dict[str, Any], str]:
    """The vle-base-for-vqa config (from the manifest in the repository) and its source."""
    config = json.loads((REPO_ROOT / MANIFEST).read_text())["config_json_as_saved_by_config_save_pretrained"]
    source = str(MANIFEST)
    labels = 10 if smoke else VQA_LABELS
    config["id2label"] = {str(i): f"answer {i}" for i in range(labels)}
    config["label2id"] = {f"answer {i}": i for i in range(labels)}
    if smoke:
        config.update(SMOKE_SIZES)
        config["text_config"] = {**config["text_config"], **SMOKE_SIZES, "vocab_size": 200, "position_buckets": 16}
        config["vision_config"] = {**config["vision_config"], **SMOKE_SIZES, "image_size": 32, "patch_size": 8,
                                   "projection_dim": 32}
    return config, source


def build_vle(device: torch.device, dtype: torch.dtype, workdir: Path, smoke: bool):
    """Random-weight VLEForVQA of vle-base-for-vqa sizes on ``device`` in ``dtype``, and its processor."""
    from bench.random_models import CORPUS
    from vle import VLEConfig, VLEForVQA
    from vle.processing_vle import VLEProcessor
    from vle.processor_training import write_processor_files

    config, source = vle_config(smoke)
    print(f"VLE config from {source}")
    image_size = config["vision_config"]["image_size"]
    write_processor_files(workdir / "vle", CORPUS * 20, image_size=image_size, vocab_size=120)
    processor = VLEProcessor.from_pretrained(str(workdir / "vle"))
    with torch.device(device):
        model = VLEForVQA(VLEConfig(**config))
    return model.to(dtype).eval(), processor


def build_blip(device: torch.device, dtype: torch.dtype, smoke: bool):
    """Random-weight BLIP captioner of blip-image-captioning-base sizes (BlipConfig defaults)."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    from bench.random_models import blip_processor
    from captioner import BlipCaptioner

    if smoke:
        config = BlipConfig(text_config={**SMOKE_SIZES, "vocab_size": 30524},
                            vision_config={**SMOKE_SIZES, "image_size": 32, "patch_size": 8})
    else:
        config = BlipConfig()
    with torch.device(device):
        model = BlipForConditionalGeneration(config)
    # random weights never stop early: 12 new tokens, about a real caption's length
    return BlipCaptioner(model.to(dtype).eval(), blip_processor(config), "blip-base-shaped-random",
                         max_new_tokens=12, min_new_tokens=12)


def save_random_llm(folder: Path, device: torch.device, smoke: bool) -> None:
    """Save a Qwen2.5-1.5B-shaped chat LM with random bf16 weights (and its tokenizer) into ``folder``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.random_models import CORPUS, chat_tokenizer

    sizes = {**QWEN25_15B, **SMOKE_SIZES, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "hidden_size": 64, "intermediate_size": 128, "vocab_size": 512} \
        if smoke else QWEN25_15B
    tokenizer = chat_tokenizer(sizes["vocab_size"], CORPUS + list(QUESTIONS))
    config = Qwen2Config(**sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


def load_llm(folder: Path, device: torch.device, precision: str):
    """The saved LLM loaded in 4-bit (bitsandbytes, ``device_map="auto"``) or bf16, as a TransformersChatLLM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from llm import TransformersChatLLM

    if precision == "4bit":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, device_map="auto",
                                                     dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    quantized = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    if precision == "4bit" and not quantized:
        raise SystemExit("The LLM loaded without any 4-bit layer: check the bitsandbytes installation.")
    print(f"  LLM layers in 4-bit: {quantized}; weights in memory: {model.get_memory_footprint() / 2**20:.0f} MiB")
    return TransformersChatLLM(model, tokenizer, f"qwen2.5-1.5b-shaped-random-{precision}",
                               quantization="4bit" if precision == "4bit" else None)


# -------------------------------------------------------------------------------------------- run
def timed(label: str, memory: GPUMemory, build):
    """Run ``build()``, print its time and the GPU memory it added; return its result."""
    before = memory.allocated_mb()
    started = time.perf_counter()
    result = build()
    memory.sync()
    print(f"{label}: {time.perf_counter() - started:6.1f} s, +{memory.allocated_mb() - before:8.0f} MiB GPU memory")
    return result


def ask(pipe, image: Image.Image, question: str, memory: GPUMemory, max_new_tokens: int):
    """One question; returns the result and the peak GPU memory (MiB) during it."""
    memory.reset_peak()
    result = pipe.run(image, question, top_k=5, max_new_tokens=max_new_tokens)
    memory.sync()
    return result, memory.peak_mb()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (default: cuda)")
    parser.add_argument("--llm-precision", choices=("4bit", "bf16"), default="4bit",
                        help="LLM weights: 4-bit through bitsandbytes (default) or bf16")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="LLM tokens per answer (default: 32)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; with --device cpu, a check of the script")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build, load and run; 0 when the question was answered end to end (or there is no CUDA)."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU here (torch.cuda.is_available() is False): nothing to check. Run this script on a "
              "machine with an NVIDIA GPU and a CUDA build of PyTorch.")
        return 0
    if device.type != "cuda" and not args.smoke:
        print("Only --smoke runs on a non-CUDA device (the full shapes are meant for the GPU).")
        return 2
    if args.llm_precision == "4bit":
        if device.type != "cuda":
            print("4-bit loading needs CUDA: use --llm-precision bf16 on this device.")
            return 2
        if importlib.util.find_spec("bitsandbytes") is None:
            print(BNB_INSTALL)
            return 1

    from bench.random_models import photo
    from vqa_llm import VQALLMPipeline
    from vqa_llm.result import STAGES

    torch.manual_seed(0)
    memory = GPUMemory(device)
    if memory.cuda:
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    memory.reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        vle_model, processor = timed("VLE vle-base-for-vqa shapes, bf16", memory,
                                     lambda: build_vle(device, torch.bfloat16, workdir, args.smoke))
        captioner = timed("BLIP base shapes, bf16", memory, lambda: build_blip(device, torch.bfloat16, args.smoke))
        timed("LLM Qwen2.5-1.5B shapes, random weights saved", memory,
              lambda: save_random_llm(workdir / "llm", device, args.smoke))
        if memory.cuda:
            torch.cuda.empty_cache()
        llm = timed(f"LLM loaded in {args.llm_precision}", memory,
                    lambda: load_llm(workdir / "llm", device, args.llm_precision))
    pipe = VQALLMPipeline(vle_model, processor, captioner, llm, llm_timeout=600)
    print(f"all models: {memory.allocated_mb():.0f} MiB GPU memory; peak while loading {memory.peak_mb():.0f} MiB")

    ask(pipe, photo(0), QUESTIONS[0], memory, args.max_new_tokens)  # warm-up (kernels, allocator)
    first, peak1 = ask(pipe, photo(1), QUESTIONS[1], memory, args.max_new_tokens)
    second, peak2 = ask(pipe, photo(1), QUESTIONS[2], memory, args.max_new_tokens)
    print(f"\n{'stage (s)':<14}{'new image':>12}{'same image':>12}")
    for stage in STAGES:
        print(f"{stage:<14}{first.timings[stage]:>12.3f}{second.timings[stage]:>12.3f}")
    print(f"{'peak GPU MiB':<14}{peak1:>12.0f}{peak2:>12.0f}")
    print(f"\ncache hit on the second question: {second.cache_hit}")
    print(f"caption: {first.caption[:80]!r}")
    print(f"VLE top-5: {[answer for answer, _ in first.candidates]}")
    print(f"LLM reply ({len(first.llm_reply)} chars): {first.llm_reply[:80]!r}; error: {first.error}")
    ok = len(first.candidates) == 5 and second.cache_hit and first.error is None
    print("OK: answered end to end" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
