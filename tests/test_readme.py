"""The one README merge (`dataset/readme.py`), used when the card is rendered and when it is
pushed: its rule on line endings, markers, headers and READMEs synth-disco did not write.
The same cases through the two real paths are in test_card.py and test_hub.py."""

from __future__ import annotations

import yaml

from synth_disco.dataset.readme import CARD_BEGIN, CARD_END, card_text, merge_readme

GENERATED = card_text({"license": "cc-by-4.0", "tags": ["synthetic"]}, "# Card\n\nNew numbers.")


def _header(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_nothing_to_merge_gives_the_generated_card() -> None:
    assert merge_readme(None, GENERATED) == GENERATED
    assert merge_readme(" \n", GENERATED) == GENERATED
    assert merge_readme(GENERATED, GENERATED) == GENERATED


def test_text_around_the_markers_and_added_keys_are_kept() -> None:
    old = card_text({"license": "mit", "tags": ["mine"], "extra": 1}, "Old numbers.")
    old = old.replace(CARD_BEGIN, "Intro.\n" + CARD_BEGIN).replace(CARD_END, CARD_END + "\nEnd.")
    merged = merge_readme(old, GENERATED)
    assert _header(merged) == {"license": "cc-by-4.0", "tags": ["synthetic", "mine"], "extra": 1}
    assert merged.endswith(f"---\nIntro.\n{CARD_BEGIN}\n# Card\n\nNew numbers.\n{CARD_END}\nEnd.\n")
    assert merge_readme(merged, GENERATED) == merged


def test_crlf_is_read_as_lf_and_the_result_is_lf() -> None:
    old = GENERATED.replace("- synthetic\n", "- synthetic\n- mine\n") + "\nNotes.\n"
    merged = merge_readme(old.replace("\n", "\r\n"), GENERATED)
    assert merged == merge_readme(old, GENERATED)
    assert "\r" not in merged and _header(merged)["tags"] == ["synthetic", "mine"]
    assert merge_readme(GENERATED.replace("\n", "\r\n"), GENERATED) == GENERATED


def test_a_readme_without_markers_is_kept_after_the_generated_body() -> None:
    old = "---\ntags:\n- mine\n---\n# Ours\n\nHand written.\n"
    merged = merge_readme(old, GENERATED)
    assert merged.endswith(f"{CARD_END}\n\n# Ours\n\nHand written.\n")
    assert _header(merged)["tags"] == ["synthetic", "mine"]
    assert merge_readme(merged, GENERATED) == merged  # the markers are there now
    assert merge_readme("Just text.", GENERATED).endswith(f"{CARD_END}\n\nJust text.\n")


def test_a_card_synth_disco_wrote_without_markers_is_replaced() -> None:
    old = "---\nlicense: mit\n---\n# Old card\n"
    assert merge_readme(old, GENERATED, known_generated=["x", old.replace("\n", "\r\n")]) == (
        GENERATED
    )


def test_a_generated_readme_without_markers_becomes_one_block() -> None:
    merged = merge_readme("Ours.\n", "---\nlicense: mit\n---\n# Card\n")
    assert merged == f"---\nlicense: mit\n---\n{CARD_BEGIN}\n# Card\n{CARD_END}\n\nOurs.\n"


def test_broken_headers_and_markers_do_not_break_the_merge() -> None:
    # An existing header that is not a mapping is dropped; an end marker before the begin
    # marker is no block.
    assert _header(merge_readme("---\n- a list\n---\nText.\n", GENERATED))["tags"] == ["synthetic"]
    reversed_markers = f"{CARD_END}\nText.\n{CARD_BEGIN}\n"
    merged = merge_readme(reversed_markers, GENERATED)
    assert merged.startswith(GENERATED.rstrip("\n")) and merged.endswith(reversed_markers)
    # A generated header that is not YAML is kept as it is (the Hub reports it).
    assert merge_readme("x", "---\nconfigs: [\n---\nbody\n").startswith("---\nconfigs: [\n---\n")
