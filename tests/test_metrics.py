"""Tests of the official VQA metric (vqa_llm.metrics): every normalisation rule and the accuracy
formula, on cases worked out by hand from the official evaluation code."""

import pytest

from vqa_llm.metrics import (
    AccuracyReport,
    normalize_answer,
    summarise_accuracy,
    vqa_accuracy,
)

# ---------------------------------------------------------------- cleaning


def test_newlines_and_tabs_become_spaces_and_text_is_stripped():
    assert normalize_answer("\tred\ncar \n") == "red car"


# ---------------------------------------------------------------- punctuation step


def test_mark_without_space_next_to_it_becomes_a_space():
    assert normalize_answer("black-and-white") == "black and white"
    assert normalize_answer("cat/dog") == "cat dog"
    assert normalize_answer("cat,dog") == "cat dog"


def test_mark_with_space_after_it_is_deleted_everywhere():
    # "- " occurs once, so every "-" is deleted, including the one inside "t-shirt".
    assert normalize_answer("t-shirt- red") == "tshirt red"


def test_mark_with_space_before_it_is_deleted_everywhere():
    assert normalize_answer("t-shirt -red") == "tshirt red"


def test_decision_is_taken_per_mark():
    # "(" has no space next to it -> space; ")" is followed by a space -> deleted.
    assert normalize_answer("x(y) z") == "x y z"


def test_digit_comma_digit_deletes_every_mark():
    assert normalize_answer("1,000") == "1000"
    # without the digit-comma-digit the "/" and the comma would become spaces
    assert normalize_answer("cat/dog,fish 1,5") == "catdogfish 15"


def test_apostrophe_and_colon_are_not_punctuation_marks():
    assert normalize_answer("it's") == "it's"
    assert normalize_answer("10:30") == "10:30"


def test_question_and_exclamation_marks():
    assert normalize_answer("yes!") == "yes"
    assert normalize_answer("why?") == "why"


# ---------------------------------------------------------------- periods


def test_period_not_followed_by_digit_is_removed():
    assert normalize_answer("2.") == "2"  # the period after a digit goes too (official regex typo)
    assert normalize_answer("a.m.") == "am"
    assert normalize_answer("mr.smith") == "mrsmith"


def test_period_followed_by_digit_is_kept():
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer(".5") == ".5"


def test_at_most_32_periods_are_removed():
    # re.UNICODE (32) is passed where `count` goes in the official call.
    assert normalize_answer("." * 40) == "." * 8
    assert normalize_answer("." * 32) == ""
    assert normalize_answer("wait" + "." * 33) == "wait."


# ---------------------------------------------------------------- digits, articles, contractions


def test_number_words_become_digits_case_insensitively():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("none") == "0"
    assert normalize_answer("zero") == "0"
    assert normalize_answer("ten") == "10"
    assert normalize_answer("eleven") == "eleven"
    assert normalize_answer("one two three four five six seven eight nine") == "1 2 3 4 5 6 7 8 9"


def test_number_words_are_whole_words_only():
    assert normalize_answer("someone") == "someone"


def test_articles_are_dropped():
    assert normalize_answer("The Dog") == "dog"
    assert normalize_answer("an apple") == "apple"
    assert normalize_answer("a") == ""
    # after punctuation, "a,b" is two words, the first an article
    assert normalize_answer("a,b") == "b"


def test_punctuation_runs_before_number_words():
    assert normalize_answer("ten!") == "10"
    assert normalize_answer("(two)") == "2"


def test_contractions():
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("isnt it") == "isn't it"
    assert normalize_answer("Whats up") == "what's up"
    # the official map's quirks: capitalised keys never match, one entry runs backwards
    assert normalize_answer("Im") == "im"
    assert normalize_answer("somebody'd") == "somebodyd"


def test_spaces_are_collapsed():
    assert normalize_answer("red   and  blue") == "red and blue"


# ---------------------------------------------------------------- accuracy


def _ten(matching: int, answer: str = "cat", other: str = "dog") -> list[str]:
    return [answer] * matching + [other] * (10 - matching)


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # 0 matches: every left-out subset has 0 matches.
        (0, 0.0),
        # 1: leaving out the match -> 0; leaving out any of the 9 others -> 1/3. 9 * (1/3) / 10.
        (1, 0.3),
        # 2: 2 * (1/3) + 8 * (2/3) = 18/3 = 6 -> / 10.
        (2, 0.6),
        # 3: 3 * (2/3) + 7 * 1 = 9 -> / 10.
        (3, 0.9),
        # 4: every left-out subset still has >= 3 matches.
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_out_accuracy(matching, expected):
    assert vqa_accuracy("cat", _ten(matching)) == pytest.approx(expected)


def test_all_identical_answers_are_not_normalised():
    answers = ["yes"] * 10
    assert vqa_accuracy("yes", answers) == 1.0
    assert vqa_accuracy(" yes\n", answers) == 1.0  # cleaning still applies
    assert vqa_accuracy("Yes", answers) == 0.0  # but no lower-casing ...
    assert vqa_accuracy("yes.", answers) == 0.0  # ... and no punctuation removal


def test_differing_answers_normalise_prediction_and_answers():
    answers = ["yes"] * 9 + ["no"]
    assert vqa_accuracy("Yes.", answers) == 1.0
    # "Two " and "two" differ before normalisation, both become "2"
    assert vqa_accuracy("2", ["Two "] * 5 + ["two"] * 5) == 1.0


def test_identical_after_cleaning_counts_as_identical():
    # stripping happens before the "all identical?" test
    assert vqa_accuracy("Yes", ["yes"] * 5 + [" yes"] * 5) == 0.0


def test_fewer_answers_use_the_same_leave_one_out_formula():
    # five identical answers: each left-out one leaves 4 matches -> 1.0
    assert vqa_accuracy("cat", ["cat"] * 5) == 1.0
    # two answers, one matching: leaving out "cat" -> 0, leaving out "dog" -> 1/3; mean 1/6
    assert vqa_accuracy("cat", ["cat", "dog"]) == pytest.approx(1 / 6)
    # three answers, two matching: 2 * (1/3) + 1 * (2/3) = 4/3 -> / 3
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9)


def test_single_answer_is_an_exact_match():
    assert vqa_accuracy("The Cat", ["cat"]) == 0.0  # one answer -> all identical -> no normalisation
    assert vqa_accuracy("cat", ["cat"]) == 1.0


def test_no_answers_is_an_error():
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("cat", [])


def test_realistic_vqav2_question():
    answers = ["2", "two", "2", "3", "2 dogs", "2", "Two", "2", "3", "2"]
    # normalised: 2,2,2,3,"2 dogs",2,2,2,3,2 -> "2" seven times
    assert vqa_accuracy("two", answers) == 1.0
    # "3" matches twice: 2 * (1/3) + 8 * (2/3) -> 0.6
    assert vqa_accuracy("3", answers) == pytest.approx(0.6)
    assert vqa_accuracy("2 dogs", answers) == pytest.approx(0.3)


# ---------------------------------------------------------------- aggregation


def test_summarise_accuracy_rounds_percentages_like_the_official_tool():
    report = summarise_accuracy(
        [1.0, 0.3, 0.0, 0.6],
        question_types=["how many", "how many", "what color is the", "how many"],
        answer_types=["number", "number", "other", "number"],
    )
    assert isinstance(report, AccuracyReport)
    assert report.count == 4
    assert report.overall == 47.5
    assert report.per_question_type == {"how many": round(100 * 1.9 / 3, 2), "what color is the": 0.0}
    assert report.per_question_type["how many"] == 63.33
    assert report.per_answer_type == {"number": 63.33, "other": 0.0}


def test_summarise_accuracy_checks_its_input():
    assert summarise_accuracy([0.5]).per_answer_type == {}
    with pytest.raises(ValueError):
        summarise_accuracy([])
    with pytest.raises(ValueError, match="one label per question"):
        summarise_accuracy([0.5, 1.0], answer_types=["other"])
