"""Helpers for the app tests: model folders for the demo, a tiny VLE pretraining checkpoint, a free port.

:func:`demo_model_argv` returns ``app.py`` flags that run the demo offline: the bundled easy-VQA VLE and BLIP
when ``assets/models/`` holds them, tiny random ones otherwise; always a tiny chat LLM (the bundled SmolLM2
would make every test wait for it); for the matching, classification and relevance tabs the bundled VLE
pretraining checkpoint when present, else a tiny random one.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from tiny_models import build_tiny_blip, build_tiny_chat_lm
from tiny_vle import IMAGE_SIZE, build_tiny_vle_vqa, tiny_vle_config
from tiny_vle_processor import write_original_processor_files
from vle import VLEForPreTraining

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_VQA = REPO_ROOT / "assets" / "models" / "vle-easyvqa"
BUNDLED_CAPTIONER = REPO_ROOT / "assets" / "models" / "blip-easyvqa"
BUNDLED_PRETRAIN = REPO_ROOT / "assets" / "models" / "vle-easyvqa-pretrain"


def bundled_models_present() -> bool:
    """Whether the bundled easy-VQA VLE and BLIP folders exist (with a config.json each)."""
    return (BUNDLED_VQA / "config.json").is_file() and (BUNDLED_CAPTIONER / "config.json").is_file()


def bundled_pretrain_present() -> bool:
    """Whether the bundled VLE pretraining checkpoint folder exists (with a config.json)."""
    return (BUNDLED_PRETRAIN / "config.json").is_file()


def build_tiny_vle_pretrained(directory: str | Path, seed: int = 0) -> str:
    """Save a tiny random VLE checkpoint holding the ITM, PBC and MLM heads (like hfl/vle-base)."""
    directory = Path(directory)
    write_original_processor_files(directory, image_size=IMAGE_SIZE)
    torch.manual_seed(seed)
    VLEForPreTraining(tiny_vle_config()).save_pretrained(directory)
    return str(directory)


def demo_model_argv(root: str | Path) -> list[str]:
    """``app.py`` model flags for an offline test run (see the module docstring); models are built under ``root``."""
    root = Path(root)
    argv = ["--profile", "bundled", "--llm", build_tiny_chat_lm(root / "chat", max_position_embeddings=2048),
            "--device", "cpu"]
    if not bundled_pretrain_present():
        argv += ["--vle-pretrained", build_tiny_vle_pretrained(root / "vle-pretrained")]
    if not bundled_models_present():
        argv += ["--vqa-model", build_tiny_vle_vqa(root / "vle-vqa"), "--captioner", build_tiny_blip(root / "blip")]
    return argv


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
