"""Forward-pass benchmark of VLE at the real vle-base-for-vqa size (random weights, no download).

    .venv/bin/python bench/vle_forward.py                 # batch 1 and 8, SDPA vs eager fusion attention
    .venv/bin/python bench/vle_forward.py --batch-sizes 1 --runs 5 --profile
    .venv/bin/python bench/vle_forward.py --precision fp32 int8       # the int8 fast mode against fp32

Prints, per (batch size, fusion attention): median ms per forward after warm-up, the forward's FLOP count
(torch's FlopCounterMode: matmuls, convolutions, attention), the achieved GFLOP/s, and that as a share of the
fp32 matmul peak of this machine measured in the same run (so the ratio means something on a noisy machine).
``--profile`` adds the operators where the time goes (torch.profiler, one batch-1 forward).

``--precision fp32 int8`` instead times the model in each precision with SDPA fusion attention, forwards of the
precisions interleaved so that a busy machine slows them alike, and reports how far each one's logits and top-1
answer move from fp32. ``int8`` is what ``--vqa-precision int8`` runs on this CPU (``vqa_llm.fast_vle``:
OpenVINO static int8 where the CPU has VNNI/AMX and openvino is installed, else PyTorch dynamic int8);
``int8-torch`` (``vle.quantize_int8``, backend ``--int8-backend``), ``int8-openvino`` and ``openvino-fp32``
(``vle.openvino_vqa``, calibrated on ``--calibration`` random inputs; the export is cached in a temporary folder)
name one mode each. Its last line is a JSON object: ``{"fp32_s": ..., "int8_s": ..., "speedup": ..., ...}``
(seconds per forward at the first batch size; ``speedup`` is fp32 over ``int8``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vle import VLEConfig, VLEForVQA, quantize_int8
from vle.openvino_vqa import OpenVINOVLEForVQA
from vle.quantization import INT8_BACKENDS
from vqa_llm.fast_vle import int8_runtime

PRECISIONS = ("fp32", "int8", "int8-torch", "int8-openvino", "openvino-fp32")

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


def precision_model(model: VLEForVQA, precision: str, backend: str, calibration: int, cache: str):
    """``model`` (fp32) in ``precision``: itself, PyTorch dynamic int8, or an OpenVINO export (int8 or fp32)."""
    if precision == "int8":
        precision = "int8-openvino" if int8_runtime() == "openvino" else "int8-torch"
    if precision == "int8-torch":
        return quantize_int8(copy.deepcopy(model), backend=backend)
    if precision in ("int8-openvino", "openvino-fp32"):
        size = model.config.vision_config.image_size
        batches = [inputs(1, size) for _ in range(calibration)]
        for batch in batches:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return OpenVINOVLEForVQA.from_model(model, cache, batches, quantize=precision == "int8-openvino")
    return model


def compare_precisions(model: VLEForVQA, precisions: list[str], batch_sizes: list[int], runs: int,
                       backend: str, calibration: int) -> None:
    """Time ``model`` in each precision, forwards interleaved; print a table, then the JSON summary line."""
    model.config.fusion_attn_implementation = "sdpa"
    cache = tempfile.mkdtemp(prefix="vle-openvino-bench-")
    models = {p: precision_model(model, p, backend, calibration, cache) for p in precisions}
    summary: dict[str, float | int | str | bool] = {"int8_mode": int8_runtime(), "int8_backend": backend,
                                                     "threads": torch.get_num_threads()}
    print("\n| batch | precision | s / forward | speed-up vs fp32 | max abs logit diff | top-1 same |")
    print("|---:|---|---:|---:|---:|---:|")
    for index, batch in enumerate(batch_sizes):
        batch_inputs = inputs(batch, model.config.vision_config.image_size)
        times: dict[str, list[float]] = {p: [] for p in precisions}
        logits: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for p, m in models.items():  # warm-up, and the outputs to compare
                logits[p] = m(**batch_inputs).logits
            for _ in range(runs):
                for p, m in models.items():
                    start = time.perf_counter()
                    m(**batch_inputs)
                    times[p].append(time.perf_counter() - start)
        seconds = {p: statistics.median(t) for p, t in times.items()}
        reference = logits.get("fp32", next(iter(logits.values())))
        for p in precisions:
            diff = (logits[p] - reference).abs().max().item()
            same = bool((logits[p].argmax(-1) == reference.argmax(-1)).all())
            speedup = seconds.get("fp32", seconds[p]) / seconds[p]
            print(f"| {batch} | {p} | {seconds[p]:.3f} | {speedup:.2f}x | {diff:.3g} | {same} |", flush=True)
            if index == 0:
                summary[f"{p}_s"] = round(seconds[p], 4)
                if p != "fp32":
                    summary[f"{p}_max_logit_diff"], summary[f"{p}_top1_same"] = round(diff, 5), same
        if index == 0:
            summary["batch"] = batch
    if "fp32_s" in summary and "int8_s" in summary:
        summary["speedup"] = round(summary["fp32_s"] / summary["int8_s"], 3)
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 1 8 (1 with --precision)")
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"], choices=["sdpa", "eager"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS,
                        help="compare these VLE precisions (e.g. fp32 int8) instead of the attention variants")
    parser.add_argument("--int8-backend", choices=INT8_BACKENDS, default="auto",
                        help="vle.quantize_int8 backend for --precision int8-torch (and int8 where it is PyTorch's)")
    parser.add_argument("--calibration", type=int, default=8,
                        help="random inputs that calibrate the OpenVINO int8 export (default 8)")
    args = parser.parse_args()

    model = build_model()
    if args.precision:
        print(f"vle-base-for-vqa: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
              f"{model.config.vision_config.image_size} px, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        compare_precisions(model, list(dict.fromkeys(args.precision)), args.batch_sizes or [1], args.runs,
                           args.int8_backend, args.calibration)
        return
    args.batch_sizes = args.batch_sizes or [1, 8]
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
