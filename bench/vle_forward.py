"""Forward-pass benchmark of VLE at the real vle-base-for-vqa size (random weights, no download).

    .venv/bin/python bench/vle_forward.py                 # batch 1 and 8, SDPA vs eager fusion attention
    .venv/bin/python bench/vle_forward.py --batch-sizes 1 --runs 5 --profile

Prints, per (batch size, fusion attention): median ms per forward after warm-up, the forward's FLOP count
(torch's FlopCounterMode: matmuls, convolutions, attention), the achieved GFLOP/s, and that as a share of the
fp32 matmul peak of this machine measured in the same run (so the ratio means something on a noisy machine).
``--profile`` adds the operators where the time goes (torch.profiler, one batch-1 forward).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vle import VLEConfig, VLEForVQA  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "tests/fixtures/vle_reference/manifests/vle-base-for-vqa.json"


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of a square matmul on this machine, now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def build_model() -> VLEForVQA:
    config = json.loads(MANIFEST.read_text())["config_json_as_saved_by_config_save_pretrained"]
    with torch.device("meta"):
        model = VLEForVQA(VLEConfig(**config))
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
        for name, buffer in model.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    return model.eval()


def inputs(batch: int, image_size: int, text_len: int = 16) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(5, 1000, (batch, text_len)),
        "attention_mask": torch.ones(batch, text_len, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, image_size, image_size),
    }


def count_flops(model: VLEForVQA, batch_inputs: dict[str, torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**batch_inputs)
    return counter.get_total_flops()


def time_forward(model: VLEForVQA, batch_inputs: dict[str, torch.Tensor], runs: int, warmup: int = 1) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            model(**batch_inputs)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(**batch_inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"], choices=["sdpa", "eager"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    model = build_model()
    size = model.config.vision_config.image_size
    print(f"vle-base-for-vqa: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {size} px, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for batch in args.batch_sizes:
        batch_inputs = inputs(batch, size)
        flops = count_flops(model, batch_inputs)
        for attn in args.attn:
            model.config.fusion_attn_implementation = attn
            peak_before = matmul_peak()
            seconds = time_forward(model, batch_inputs, args.runs)
            peak = max(peak_before, matmul_peak())
            achieved = flops / seconds / 1e9
            rows.append((batch, attn, seconds * 1000, flops / 1e9, achieved, peak, achieved / peak))
            print(f"  batch {batch} {attn}: {seconds * 1000:.0f} ms", flush=True)

    print("\n| batch | fusion attention | ms / forward | GFLOP / forward | GFLOP/s | matmul peak GFLOP/s | % of peak |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for batch, attn, ms, gflop, achieved, peak, ratio in rows:
        print(f"| {batch} | {attn} | {ms:.0f} | {gflop:.0f} | {achieved:.1f} | {peak:.1f} | {ratio:.0%} |")

    if args.profile:
        model.config.fusion_attn_implementation = "sdpa"
        batch_inputs = inputs(1, size)
        with torch.inference_mode():
            model(**batch_inputs)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                model(**batch_inputs)
        print("\nWhere the time goes (batch 1, SDPA):")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
