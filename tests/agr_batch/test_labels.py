from __future__ import annotations

import re

import pytest

from agr_batch import labels


def test_vocabularies_match_fairface_strings():
    assert labels.AGE == (
        "0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70",
    )  # fmt: skip
    assert labels.GENDER == ("Male", "Female")
    assert labels.RACE == (
        "White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
        "Middle Eastern",
    )  # fmt: skip
    assert labels.num_classes() == {"age": 9, "gender": 2, "race": 7}


def test_encode_maps_by_string():
    assert labels.encode("age", "more than 70") == 8
    assert labels.encode("race", "Latino_Hispanic") == 2
    assert labels.encode("gender", " Female ") == 1
    assert labels.encode_row({"age": "3-9", "gender": "Male", "race": "Indian"}) == (1, 0, 5)
    for head, names in labels.VOCABULARIES.items():
        assert [labels.LABEL_MAPS[head].name(labels.encode(head, n)) for n in names] == list(names)


@pytest.mark.parametrize(
    ("head", "value"),
    [("age", "70+"), ("race", "Latino"), ("gender", "male"), ("race", "Asian")],
)
def test_unknown_label_is_named_in_error(head, value):
    with pytest.raises(labels.LabelError, match=re.escape(repr(value))):
        labels.encode(head, value)


def test_unknown_head_rejected():
    with pytest.raises(labels.LabelError, match="unknown head 'emotion'"):
        labels.encode("emotion", "happy")


def test_index_out_of_range():
    with pytest.raises(IndexError):
        labels.LABEL_MAPS["gender"].name(2)
