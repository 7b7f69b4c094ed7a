"""README.ko.md keeps in step with README.md: the same commands, table numbers and headings."""
import os
import re
from collections import Counter

from conftest import ROOT


def read(name):
    return open(os.path.join(ROOT, name), encoding="utf-8").read()


def commands(text):
    """Every line of every fenced block, and every inline `python ...` command."""
    fenced = [line.rstrip() for block in re.findall(r"```\w*\n(.*?)```", text, re.S)
              for line in block.splitlines() if line.strip()]
    return set(fenced) | set(re.findall(r"`(python [^`]+)`", text))


def table_numbers(text):
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return Counter(n for row in rows for n in re.findall(r"\d+(?:[.,]\d+)*", row))


def test_both_readmes_link_to_each_other_in_their_first_line():
    assert "README.ko.md" in read("README.md").splitlines()[0]
    assert "README.md" in read("README.ko.md").splitlines()[0]


def test_the_korean_readme_has_every_command_and_the_english_one_every_korean_command():
    en, ko = commands(read("README.md")), commands(read("README.ko.md"))
    assert not en - ko, f"missing in README.ko.md: {sorted(en - ko)}"
    assert not ko - en, f"missing in README.md: {sorted(ko - en)}"


def test_every_table_number_of_readme_is_in_the_korean_tables():
    en, ko = table_numbers(read("README.md")), table_numbers(read("README.ko.md"))
    missing = en - ko
    assert not missing, f"numbers of README.md's tables missing in README.ko.md: {missing}"


def test_the_same_headings_by_level_and_both_within_their_size():
    levels = [Counter(len(h) for h in re.findall(r"(?m)^(#+) ", read(name)))
              for name in ("README.md", "README.ko.md")]
    assert levels[0] == levels[1]
    assert len(read("README.md").encode()) <= 17_000
    assert len(read("README.ko.md").encode()) <= 24_000
