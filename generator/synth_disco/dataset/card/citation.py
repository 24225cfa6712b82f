"""The card's BibTeX: the recipe's own, else one made for the dataset."""

from __future__ import annotations

import re

from synth_disco.recipe.schema import Recipe


def _bibtex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def _citation(recipe: Recipe, repo: str, package_version: str, year: str | None) -> str:
    """The recipe's own BibTeX, else one for the dataset: its authors (``output.authors``,
    else the Hub namespace it is published under, as an organisation) and the year the run
    was started."""
    if recipe.output.citation:
        return recipe.output.citation.strip()
    key = re.sub(r"[^A-Za-z0-9]+", "_", f"{recipe.name}_{recipe.version}").strip("_")
    title = _bibtex_escape(recipe.output.pretty_name or recipe.name)
    if recipe.output.authors:
        author = " and ".join(_bibtex_escape(a) for a in recipe.output.authors)
    else:
        author = "{" + _bibtex_escape(repo.split("/")[0]) + "}"  # braces: an organisation
    lines = [
        f"@misc{{{key},",
        f"  author = {{{author}}},",
        f"  title = {{{{{title}}}: synthetic online discussions (version {recipe.version})}},",
    ]
    if year:
        lines.append(f"  year = {{{year}}},")
    lines += [
        f"  howpublished = {{\\url{{https://huggingface.co/datasets/{repo}}}}},",
        f"  note = {{Generated with synth-disco {package_version} from the recipe "
        f"{_bibtex_escape(recipe.name)}}}",
        "}",
    ]
    return "\n".join(lines)
