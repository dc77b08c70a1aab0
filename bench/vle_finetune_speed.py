"""Optimiser steps per second of VLE VQA fine-tuning (``training.vqa_finetune.train_vqa``) at the bundled model's
size on easy-VQA, so two versions of the training code can be compared side by side on one machine.

    python bench/vle_finetune_speed.py --steps 150                       # this checkout
    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python /tmp/old/bench/vle_finetune_speed.py ... # or run this file with the old tree first

It trains a freshly initialised bundled-size VLE (seed 0) for ``--steps`` steps of batch 64 (images preprocessed
once beforehand, so both runs start from a warm image cache) and prints the steps per second of the steady part.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the rate (cold start)")
    args = parser.parse_args()

    from training import vqa_finetune
    from training.bundle import small_vle_config
    from vle import VLEForVQA, VLEProcessor
    from vle.vqa_data import load_easy_vqa
    from vqa_llm.profiles import BUNDLED_VQA_DIR

    processor = VLEProcessor.from_pretrained(BUNDLED_VQA_DIR)
    train = load_easy_vqa("train")
    id2label = vqa_finetune.answer_vocabulary(train)
    torch.manual_seed(0)
    model = VLEForVQA(small_vle_config(len(processor.tokenizer), id2label))
    label2id = {v: k for k, v in id2label.items()}
    dataset = vqa_finetune.VQATrainingSet(train, processor, label2id)
    for path in {e.image_path: None for e in train}:  # fill the image cache first (both versions have this class)
        dataset.pixels(dataset.image_index[path], path)

    class WarmSet(vqa_finetune.VQATrainingSet):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self._pixels = dataset._pixels

    vqa_finetune.VQATrainingSet = WarmSet
    stamps: list[float] = []
    forward = model.forward

    def timed_forward(*a, **k):
        stamps.append(time.perf_counter())
        return forward(*a, **k)

    model.forward = timed_forward
    with tempfile.TemporaryDirectory() as out:
        config = vqa_finetune.TrainingConfig(output_dir=out, epochs=6, batch_size=64, learning_rate=5e-4,
                                             warmup_steps=200, seed=0)
        vqa_finetune.train_vqa(model, processor, train, config, max_steps=args.steps)
    steady = stamps[args.warmup_steps:]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    print(f"threads {torch.get_num_threads()}, steps {len(stamps)}: {rate:.2f} steps/s "
          f"({1000 / rate:.0f} ms per step of batch 64)")


if __name__ == "__main__":
    main()
