"""GPU check: the app's CUDA paths end to end, with random weights at the sizes of the ``base`` and ``large`` profiles.

    python bench/gpu_check.py                          # base and large on cuda (large: 4-bit LLM, bitsandbytes)
    python bench/gpu_check.py --profiles base --device cuda:1
    python bench/gpu_check.py --smoke --device cpu     # tiny shapes on the CPU: a check of the script itself

Nothing is downloaded. For each profile the three models are built with random weights at that profile's sizes
(VLE from the checkpoint manifests in ``tests/fixtures/vle_reference``, BLIP from ``BlipConfig``, the LLM with
Qwen2.5-1.5B/7B-Instruct sizes) and saved to a temporary folder. They are then loaded the way the app loads
them: the profile pointed at those folders, ``VQALLMPipeline.from_profile`` and so ``vqa_llm.loading`` (the dtype
rule, TF32, the LLM placed on ``--device``, 4-bit through bitsandbytes for ``large``). Each profile answers a
warm-up question, one streamed question (time to the first LLM chunk) and a batch of 16 questions about 16
images (``run_batch``). Printed: load time, dtypes, per-stage timings and the peak memory of every visible GPU
for each step; the last line is one JSON object with all of it.

Random weights give nonsense answers and never stop early (every reply runs to ``--max-new-tokens``): this checks
that the code runs on CUDA with these shapes and dtypes, and what it costs. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

MANIFESTS = REPO_ROOT / "tests" / "fixtures" / "vle_reference" / "manifests"
PROFILES = ("base", "large")
VQA_LABELS = 3129
#: Qwen/Qwen2.5-1.5B-Instruct and Qwen/Qwen2.5-7B-Instruct sizes
QWEN25 = {
    "base": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "large": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
#: blip-image-captioning-base is BlipConfig(); -large has a ViT-L vision tower
BLIP_VISION = {"base": {}, "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                         intermediate_size=4096)}
SMOKE_SIZES = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
QUESTIONS = ("What is the man holding?", "What colour is the bus?", "How many dogs are there?",
             "Where is the cat sitting?")
BATCH = 16


# ------------------------------------------------------------------------------------------- memory
class GPUMemory:
    """Memory counters of every visible CUDA device (none on the CPU)."""

    def __init__(self, device: torch.device):
        self.indices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []

    def describe(self) -> list[dict[str, Any]]:
        return [{"index": i, "name": torch.cuda.get_device_name(i),
                 "capability": list(torch.cuda.get_device_capability(i)),
                 "total_mib": round(torch.cuda.get_device_properties(i).total_memory / 2**20)} for i in self.indices]

    def reset(self) -> None:
        for i in self.indices:
            torch.cuda.synchronize(i)
            torch.cuda.reset_peak_memory_stats(i)

    def peaks(self) -> dict[str, float]:
        """Peak MiB allocated on each GPU since the last :meth:`reset`."""
        for i in self.indices:
            torch.cuda.synchronize(i)
        return {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**20) for i in self.indices}

    def allocated(self) -> dict[str, float]:
        return {f"cuda:{i}": round(torch.cuda.memory_allocated(i) / 2**20) for i in self.indices}


# ------------------------------------------------------------------------------ random-weight models
def vle_config(profile: str, smoke: bool) -> dict[str, Any]:
    """The vle-{base,large}-for-vqa config from the manifests (shrunk for ``smoke``), with 3129 answers."""
    manifest = MANIFESTS / f"vle-{profile}-for-vqa.json"
    if not manifest.is_file():
        raise SystemExit(f"Missing {manifest}: the VLE sizes come from the repository's test fixtures.")
    config = json.loads(manifest.read_text())["config_json_as_saved_by_config_save_pretrained"]
    labels = 10 if smoke else VQA_LABELS
    config["id2label"] = {str(i): f"answer {i}" for i in range(labels)}
    config["label2id"] = {f"answer {i}": i for i in range(labels)}
    if smoke:
        config.update(SMOKE_SIZES)
        config["text_config"] = {**config["text_config"], **SMOKE_SIZES, "vocab_size": 200, "position_buckets": 16}
        config["vision_config"] = {**config["vision_config"], **SMOKE_SIZES, "image_size": 32, "patch_size": 8,
                                   "projection_dim": 32}
    return config


def _build_on(device: torch.device):
    """Initialise on the GPU (fast) when checking CUDA, else on the CPU."""
    return torch.device(device) if device.type == "cuda" else torch.device("cpu")


def save_vle(folder: Path, profile: str, smoke: bool, device: torch.device) -> None:
    """A random VLEForVQA of the profile's sizes and its processor, saved like a checkpoint (fp32)."""
    from bench.random_models import CORPUS
    from training.processor_files import write_processor_files
    from vle import VLEConfig, VLEForVQA

    config = vle_config(profile, smoke)
    write_processor_files(folder, CORPUS * 20, image_size=config["vision_config"]["image_size"], vocab_size=120)
    with _build_on(device):
        model = VLEForVQA(VLEConfig(**config))
    model.save_pretrained(folder)


def save_blip(folder: Path, profile: str, smoke: bool, device: torch.device) -> None:
    """A random BLIP captioner of blip-image-captioning-{base,large} sizes and its processor (fp32)."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    from bench.random_models import blip_processor

    if smoke:
        config = BlipConfig(text_config={**SMOKE_SIZES, "vocab_size": 30524},
                            vision_config={**SMOKE_SIZES, "image_size": 32, "patch_size": 8})
    else:
        config = BlipConfig(vision_config=BLIP_VISION[profile])
    with _build_on(device):
        model = BlipForConditionalGeneration(config)
    model.save_pretrained(folder)
    blip_processor(config).save_pretrained(folder)


def save_llm(folder: Path, profile: str, smoke: bool, device: torch.device) -> None:
    """A random Qwen2.5-shaped chat LM (bf16 weights, as published) and a ChatML tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.random_models import CORPUS, chat_tokenizer

    sizes = dict(QWEN25[profile], max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000.0)
    if smoke:
        sizes.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                     intermediate_size=128, vocab_size=512)
    tokenizer = chat_tokenizer(sizes["vocab_size"], CORPUS + list(QUESTIONS))
    config = Qwen2Config(**sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    params = 2 * sizes["vocab_size"] * sizes["hidden_size"] + sizes["num_hidden_layers"] * (
        4 * sizes["hidden_size"] ** 2 + 3 * sizes["hidden_size"] * sizes["intermediate_size"])
    where = _build_on(device)
    if where.type == "cuda" and torch.cuda.mem_get_info(where)[0] < 3 * params:  # bf16 weights + headroom
        where = torch.device("cpu")
    with where:
        model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------------------ checks
def _dtypes(pipe) -> dict[str, Any]:
    llm = pipe.llm.model
    return {
        "vqa": str(pipe.vqa_model.dtype), "captioner": str(pipe.captioner.model.dtype), "llm": str(llm.dtype),
        "llm_4bit_layers": sum(type(m).__name__ == "Linear4bit" for m in llm.modules()),
        "llm_devices": sorted({str(p.device) for p in llm.parameters()}),
        "tf32": torch.get_float32_matmul_precision(),
    }


def check_profile(name: str, args: argparse.Namespace, memory: GPUMemory, workdir: Path) -> dict[str, Any]:
    """Build, load (as the app does), stream one answer and run a batch of 16; the figures as a dict."""
    from bench.random_models import photo
    from vqa_llm import VQALLMPipeline
    from vqa_llm.profiles import HUB_PROFILES

    device = torch.device(args.device)
    folder = workdir / name
    started = time.perf_counter()
    for part, save in (("vle", save_vle), ("blip", save_blip), ("llm", save_llm)):
        save(folder / part, name, args.smoke, device)
        if memory.indices:
            torch.cuda.empty_cache()
    built_s = time.perf_counter() - started
    profile = replace(HUB_PROFILES[name], vqa_model=str(folder / "vle"), captioner=str(folder / "blip"),
                      llm=str(folder / "llm"), device=args.device, local_files_only=True)
    memory.reset()
    started = time.perf_counter()
    pipe = VQALLMPipeline.from_profile(profile, llm_timeout=600)
    report: dict[str, Any] = {"built_s": round(built_s, 1), "load_s": round(time.perf_counter() - started, 2),
                              "load_peak_mib": memory.peaks(), "resident_mib": memory.allocated(),
                              "dtypes": _dtypes(pipe)}
    print(f"[{name}] loaded in {report['load_s']} s; dtypes {report['dtypes']}; GPU MiB {report['resident_mib']}")
    # random weights never stop early: a real caption's length (about 12 tokens), fewer for the smoke check
    pipe.captioner.max_new_tokens = pipe.captioner.min_new_tokens = 4 if args.smoke else 12
    options = {"max_new_tokens": args.max_new_tokens}
    pipe.run(photo(0), QUESTIONS[0], **options)  # warm-up: kernels, allocator, caches of the model code

    memory.reset()
    started, first_chunk, result = time.perf_counter(), None, None
    for update in pipe.stream(photo(1), QUESTIONS[1], **options):
        if update.stage == "llm" and first_chunk is None:
            first_chunk = time.perf_counter() - started
        result = update.result
    report["stream"] = {"wall_s": round(time.perf_counter() - started, 3),
                        "first_llm_chunk_s": None if first_chunk is None else round(first_chunk, 3),
                        "stages_s": {k: round(v, 3) for k, v in result.timings.items()},
                        "peak_mib": memory.peaks(), "error": result.error}
    print(f"[{name}] streamed answer: {report['stream']}")

    memory.reset()
    images = [photo(100 + i) for i in range(BATCH)]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(BATCH)]
    started = time.perf_counter()
    results = pipe.run_batch(images, questions, batch_size=BATCH, **options)
    stages = {k: round(sum(r.timings[k] for r in results), 3) for k in results[0].timings}
    report["batch16"] = {"wall_s": round(time.perf_counter() - started, 3), "stages_s": stages,
                         "peak_mib": memory.peaks(), "errors": sum(r.error is not None for r in results)}
    print(f"[{name}] batch of {BATCH}: {report['batch16']}")
    answered = [result] + results
    report["ok"] = all(r.candidates and r.llm_used and r.llm_reply for r in answered)
    del pipe
    if memory.indices:
        torch.cuda.empty_cache()
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (default: cuda)")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated: base,large (default)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="LLM tokens per answer (default: 32)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; with --device cpu, a check of the script")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Check each profile; 0 when every question was answered end to end (or there is no CUDA)."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    if unknown := [n for n in names if n not in PROFILES]:
        print(f"Unknown profile(s) {unknown}: use {', '.join(PROFILES)}.")
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU here (torch.cuda.is_available() is False): nothing to check. Run this script on a "
              "machine with an NVIDIA GPU and a CUDA build of PyTorch.")
        return 0
    if device.type != "cuda" and not args.smoke:
        print("Only --smoke runs on a non-CUDA device (the full shapes are meant for the GPU).")
        return 2
    torch.manual_seed(0)
    memory = GPUMemory(device)
    summary: dict[str, Any] = {"device": args.device, "smoke": args.smoke, "torch": torch.__version__,
                               "cuda": torch.version.cuda, "gpus": memory.describe(), "profiles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            summary["profiles"][name] = check_profile(name, args, memory, Path(tmp))
    summary["ok"] = all(p["ok"] for p in summary["profiles"].values())
    print("OK: every question answered end to end" if summary["ok"] else "FAILED: see above")
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
