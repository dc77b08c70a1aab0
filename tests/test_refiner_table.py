"""bench/refiner_table.py's format rule: what counts as a reply in its template's format."""

import pytest

from script_modules import load_script

REASONING = 'The top candidate "no" scores 1.00, so the VQA model is sure.'


@pytest.mark.parametrize("template, reply, answer, kept", [
    ("short", "Explanation: sure.\nAnswer: no", "no", True),
    ("short", "No, there is none.", "no", False),
    ("long", f"{REASONING} No, there is no gray shape in the image.", "no", True),
    ("long", "Yes, there is a red circle.", "yes", True),
    # the reasoning alone is no answer a person would write: the shown sentence names the evidence
    ("long", 'The top candidate "no" scores 1.00, so the VQA model is sure and the answer is no.', "no", False),
    ("long", f"{REASONING} The caption says no.", "no", False),
    ("long", f"{REASONING} No", "no", False),                      # no sentence
    ("long", f"{REASONING} The shape is blue.", "red", False),     # the answer is not in it
    ("long", "Yes.", "yes", False),                                # fewer than 3 words
])
def test_follows_format(template, reply, answer, kept):
    table = load_script("bench/refiner_table.py")
    record = {"template": template, "llm_reply": reply, "llm_answer": answer, "llm_fallback": False}
    assert table.follows_format(record) is kept
