"""Prompt-lookup drafting (edge_lora.runtime.speculative): what it proposes from a history."""

from __future__ import annotations

import pytest

from edge_lora import InvalidRequestError
from edge_lora.runtime.speculative import PromptLookup, Speculative


def test_the_tokens_after_the_last_earlier_occurrence_of_the_final_ngram():
    spec = Speculative(num_speculative_tokens=3, prompt_lookup_max=3, prompt_lookup_min=2)
    lk = PromptLookup(spec, [1, 2, 3, 4, 5, 9, 2, 3])
    assert lk.draft(10) == [4, 5, 9]  # "2 3" was followed by 4 5 9
    assert lk.draft(2) == [4, 5]  # the caller's limit
    lk.extend([4, 7, 1, 2, 3])
    assert lk.draft(10) == [4, 5, 9]  # "1 2 3", the longest n-gram, beats the later "2 3" (then 4 7 1)
    latest = PromptLookup(Speculative(num_speculative_tokens=3, prompt_lookup_max=2), [5, 1, 2, 8, 1, 2, 9, 1, 2])
    assert latest.draft(10) == [9, 1, 2]  # of two occurrences, the later


def test_no_earlier_occurrence_no_draft():
    lk = PromptLookup(Speculative(prompt_lookup_min=2), [5, 6, 7, 8])
    assert lk.draft(8) == []
    assert PromptLookup(Speculative(), []).draft(8) == []
    assert PromptLookup(Speculative(), [1, 2, 1, 2]).draft(0) == []


def test_the_longest_ngram_is_tried_first():
    spec = Speculative(num_speculative_tokens=2, prompt_lookup_max=3, prompt_lookup_min=1)
    lk = PromptLookup(spec, [7, 8, 1, 9, 9, 8, 1, 5, 5, 7, 8, 1])
    assert lk.draft(5) == [9, 9]  # "7 8 1" (then 9 9), not the later "8 1" (then 5 5)


def test_settings_are_checked_all_at_once():
    with pytest.raises(InvalidRequestError) as err:
        Speculative(method="eagle", num_speculative_tokens=0)
    assert len(err.value.problems) == 2 and err.value.param == "speculative"
    with pytest.raises(InvalidRequestError):
        Speculative(prompt_lookup_min=4, prompt_lookup_max=2)
    assert Speculative.of("ngram") == Speculative() and Speculative.of(None) is None
    assert Speculative().method == "ngram" and Speculative(model="draft.gguf").method == "draft_model"
