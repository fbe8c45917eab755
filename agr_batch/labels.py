"""FairFace label vocabularies: the single source of truth for every head's class names.

FairFace's CSVs hold labels as strings (``fairface_label_{train,val}.csv`` with columns
``file,age,gender,race,service_test``). Labels are always mapped by string, never by the
position of a row or column, so a reordered CSV cannot silently shuffle classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

AGE: tuple[str, ...] = (
    "0-2",
    "3-9",
    "10-19",
    "20-29",
    "30-39",
    "40-49",
    "50-59",
    "60-69",
    "more than 70",
)
GENDER: tuple[str, ...] = ("Male", "Female")
RACE: tuple[str, ...] = (
    "White",
    "Black",
    "Latino_Hispanic",
    "East Asian",
    "Southeast Asian",
    "Indian",
    "Middle Eastern",
)

HEADS: tuple[str, ...] = ("age", "gender", "race")
"""Head names, in the order of :class:`agr_batch.models.HeadLogits` fields."""

VOCABULARIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"age": AGE, "gender": GENDER, "race": RACE}
)


class LabelError(ValueError):
    """A label string that is not in the FairFace vocabulary of its head."""


@dataclass(frozen=True)
class LabelMap:
    """Bidirectional map between one head's label strings and class indices.

    Attributes:
        head: Head name (``age``, ``gender`` or ``race``).
        names: Class names in index order.
    """

    head: str
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate class names for head {self.head!r}: {self.names}")

    @property
    def num_classes(self) -> int:
        """Number of classes of this head."""
        return len(self.names)

    def index(self, label: str) -> int:
        """Return the index of ``label``.

        Raises:
            LabelError: If ``label`` is not in the vocabulary; the message names the label
                and lists the accepted ones.
        """
        try:
            return self.names.index(label)
        except ValueError:
            raise LabelError(
                f"unknown {self.head} label {label!r}; expected one of {list(self.names)}"
            ) from None

    def name(self, index: int) -> str:
        """Return the label string of class ``index``."""
        if not 0 <= index < len(self.names):
            raise IndexError(f"{self.head} class index {index} outside 0..{len(self.names) - 1}")
        return self.names[index]


LABEL_MAPS: Mapping[str, LabelMap] = MappingProxyType(
    {head: LabelMap(head, names) for head, names in VOCABULARIES.items()}
)


def encode(head: str, label: str) -> int:
    """Map one CSV label string of ``head`` to its class index.

    Args:
        head: ``age``, ``gender`` or ``race``.
        label: The string as written in FairFace's CSV (surrounding whitespace is ignored).

    Raises:
        LabelError: For an unknown head or label.
    """
    if head not in LABEL_MAPS:
        raise LabelError(f"unknown head {head!r}; expected one of {list(HEADS)}")
    return LABEL_MAPS[head].index(label.strip())


def encode_row(row: Mapping[str, str]) -> tuple[int, int, int]:
    """Map a CSV row's ``age``, ``gender`` and ``race`` strings to indices."""
    return (encode("age", row["age"]), encode("gender", row["gender"]), encode("race", row["race"]))


def num_classes() -> dict[str, int]:
    """Classes per head, e.g. ``{"age": 9, "gender": 2, "race": 7}``."""
    return {head: len(names) for head, names in VOCABULARIES.items()}
