"""Class-name normalisation and validation shared by the prompt builder and the vocabulary registry."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lsmseg.prompt_cache.errors import ValidationError

MAX_CLASSES = 4096
MAX_CLASS_CHARS = 200
MAX_DESCRIPTIONS_PER_CLASS = 16
MAX_DESCRIPTION_CHARS = 1000
EMPTY_CLASS_LIST = "the class list is empty; give at least one class"


@dataclass(frozen=True)
class ClassList:
    """A class list validated once (`validate_class_list`): normalised names and the user's descriptions.
    The prompt builder and the registry take it as it is instead of validating the raw input again."""

    names: tuple[str, ...]
    descriptions: dict[str, list[str]] | None = None


def check_text(text: str, what: str) -> None:
    """ValidationError for strings that are not Unicode text: a lone UTF-16 surrogate (JSON's "\\ud800")
    can be decoded from JSON but neither hashed nor stored, since it has no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} contains a lone UTF-16 surrogate, which is not text") from None


def normalise_name(name: str) -> str:
    """Strip, lower-case and collapse whitespace: the form every lookup and hash uses."""
    return " ".join(name.split()).lower()


def first_synonym(name: str) -> str:
    """'car, auto, automobile' -> 'car' (vocabularies such as ADE-847 list synonyms after commas)."""
    return name.split(",")[0].strip() or name


def validate_classes(
    classes: Sequence[str], max_classes: int = MAX_CLASSES, max_chars: int = MAX_CLASS_CHARS
) -> list[str]:
    """The normalised class names, or a ValidationError whose message says what is wrong."""
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ValidationError("classes must be a list of class names")
    if not classes:
        raise ValidationError(EMPTY_CLASS_LIST)
    if len(classes) > max_classes:
        raise ValidationError(f"{len(classes)} classes given; at most {max_classes} are allowed")
    names = []
    for index, raw in enumerate(classes):
        if not isinstance(raw, str):
            raise ValidationError(f"class {index} is not a string")
        check_text(raw, f"class {index}")
        name = normalise_name(raw)
        if not name:
            raise ValidationError(f"class {index} is empty")
        if len(name) > max_chars:
            raise ValidationError(
                f"class {index} has {len(name)} characters; at most {max_chars} are allowed"
            )
        names.append(name)
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        shown = ", ".join(repr(name) for name in duplicates[:5])
        raise ValidationError(f"duplicate classes after normalisation (case and spaces ignored): {shown}")
    return names


def validate_descriptions(
    descriptions: Mapping[str, Sequence[str]], classes: Sequence[str]
) -> dict[str, list[str]]:
    """User-written prompts keyed by normalised class name; every key must name one of `classes`."""
    if not isinstance(descriptions, Mapping):
        raise ValidationError("descriptions must map class names to lists of sentences")
    known = set(classes)
    cleaned: dict[str, list[str]] = {}
    for raw_name, sentences in descriptions.items():
        name = normalise_name(raw_name) if isinstance(raw_name, str) else ""
        if isinstance(raw_name, str):
            check_text(raw_name, "a description's class name")
        if name not in known:
            raise ValidationError(f"descriptions given for {raw_name!r}, which is not in the class list")
        if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not sentences:
            raise ValidationError(f"descriptions for {raw_name!r} must be a non-empty list of sentences")
        if len(sentences) > MAX_DESCRIPTIONS_PER_CLASS:
            raise ValidationError(
                f"{len(sentences)} descriptions given for {raw_name!r}; at most {MAX_DESCRIPTIONS_PER_CLASS}"
            )
        for sentence in sentences:
            if not isinstance(sentence, str) or not sentence.strip():
                raise ValidationError(f"descriptions for {raw_name!r} contain an empty or non-text entry")
            check_text(sentence, f"a description for {raw_name!r}")
            if len(sentence) > MAX_DESCRIPTION_CHARS:
                raise ValidationError(
                    f"a description for {raw_name!r} has {len(sentence)} characters; "
                    f"at most {MAX_DESCRIPTION_CHARS} are allowed"
                )
        cleaned[name] = [" ".join(sentence.split()) for sentence in sentences]
    return cleaned


def validate_class_list(
    classes: Sequence[str],
    descriptions: Mapping[str, Sequence[str]] | None = None,
    max_classes: int = MAX_CLASSES,
    max_chars: int = MAX_CLASS_CHARS,
) -> ClassList:
    """Classes and descriptions checked in one pass (ValidationError says what is wrong)."""
    names = validate_classes(classes, max_classes, max_chars)
    cleaned = validate_descriptions(descriptions, names) if descriptions else None
    return ClassList(tuple(names), cleaned or None)
