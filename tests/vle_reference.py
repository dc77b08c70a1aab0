"""Where the tests find the reference data of the original VLE implementation (``tests/fixtures/vle_reference``).

The folder is a copy of what the original code produced (see its README.md): state-dict manifests of the
published checkpoints and a tiny numerical oracle. Every path below is checked when a test module imports it,
so a missing or incomplete fixture stops the run with a message instead of skipping or collecting nothing.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "vle_reference"
ORACLE = REFERENCE / "tiny_oracle"
#: every published checkpoint kind the original code knows
MANIFEST_NAMES = (
    "vle-base",
    "vle-large",
    "vle-base-for-vqa",
    "vle-large-for-vqa",
    "vle-base-for-vcr-q2a",
    "vle-base-for-vcr-qa2r",
    "vle-large-for-vcr-q2a",
    "vle-large-for-vcr-qa2r",
)
ORACLE_CLASSES = ("VLEModel", "VLEForVQA", "VLEForITM", "VLEForPBC", "VLEForMLM", "VLEForVCRQ2A", "VLEForVCRQA2R")


def _required(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"test fixture missing: {path} (tests/fixtures/vle_reference is committed)")
    return path


def manifest_path(name: str) -> Path:
    """The state-dict manifest of one published checkpoint kind, e.g. ``"vle-base-for-vqa"``."""
    return _required(REFERENCE / "manifests" / f"{name}.json")


def manifests() -> list[Path]:
    """All manifests, in a fixed order; fails when one is missing or an unknown one appeared."""
    found = sorted(p.stem for p in (REFERENCE / "manifests").glob("*.json"))
    if found != sorted(MANIFEST_NAMES):
        raise FileNotFoundError(f"test fixture manifests: expected {sorted(MANIFEST_NAMES)}, found {found}")
    return [manifest_path(name) for name in MANIFEST_NAMES]


def oracle(name: str) -> Path:
    """A file or checkpoint folder of the tiny oracle, e.g. ``"VLEForVQA"`` or ``"inputs.npz"``."""
    return _required(ORACLE / name)


def check_complete() -> None:
    """Raise FileNotFoundError unless every oracle file and every manifest is in place."""
    for name in ORACLE_CLASSES:
        for part in (f"{name}/config.json", f"{name}/pytorch_model.bin", f"{name}_expected.npz"):
            oracle(part)
    for part in ("inputs.npz", "vcr_inputs.npz", "vcr_lists.json"):
        oracle(part)
    manifests()


check_complete()
