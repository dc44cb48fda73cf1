"""The README stays true: every setting is in its table, its first commands are make run / make test, every
example block has a rule its test can read (tests/test_readme_examples.py runs them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.readme_examples import Rule, read_examples, readme_examples
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
JOBS_DOC = (REPO / "docs" / "jobs.md").read_text()


@pytest.mark.parametrize("settings_class", [GatewaySettings, WorkerSettings])
def test_every_setting_is_documented(settings_class: type[BaseSettings]) -> None:
    for name in settings_class.model_fields:
        assert f"| `{name.upper()}` |" in README, f"{name.upper()} is missing from the README settings table"


def test_every_job_setting_is_documented() -> None:
    for name in JobsSettings.model_fields:
        assert f"`{name.upper()}`" in JOBS_DOC, f"{name.upper()} is missing from the docs/jobs.md settings table"


def test_the_readme_opens_with_make_run_then_make_test() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert first_block.index("make run") < first_block.index("make test")


def test_every_example_block_has_a_readable_rule() -> None:
    examples = readme_examples()  # raises on an unknown rule, or a rule not right before a block
    models = {e.rule.argument for e in examples if e.rule is not None and e.rule.name == "model"}
    for example in examples:
        if example.rule is not None and example.rule.name == "against model":
            assert example.rule.argument in models, f"{example.name}: no block defines model {example.rule.argument!r}"
    assert any(example.rule is None or example.rule.name != "not run" for example in examples)


def test_the_default_model_the_examples_name_exists() -> None:
    """A typo in the class would skip every default-model example as "another model is served"."""
    rules = [example.rule for example in readme_examples() if example.rule is not None]
    for model_class in {rule.argument for rule in rules if rule.name == "with the default model"}:
        module, _, name = model_class.partition(":")
        source = REPO / (module.replace(".", "/") + ".py")
        assert source.is_file() and f"class {name}(" in source.read_text(), f"{model_class} is not a model class"


def test_a_rule_reads_its_block_and_the_answer_after_it() -> None:
    text = "\n".join([
        "<!-- example against model: scaler -->", "```bash", "curl -s localhost:8080/health", "```",
        "```json", '{"status": "ok"}', "```", "```python", "print(1)", "```",
    ])
    first, second = read_examples(text)
    assert first.rule == Rule("against model", "scaler") and first.answer == '{"status": "ok"}\n'
    assert first.code_for("127.0.0.1:9999") == "curl -s 127.0.0.1:9999/health\n"
    assert second.rule is None and second.answer is None and second.line == 8


@pytest.mark.parametrize("text", [
    "<!-- example skipped: typo -->\n```bash\nls\n```",
    "<!-- example not run -->\n```bash\nls\n```",
    "<!-- example not run: no block follows -->\n\n```bash\nls\n```",
    "```bash\nls\n",
])
def test_a_wrong_rule_is_an_error_not_a_skip(text: str) -> None:
    with pytest.raises(ValueError, match=r"README\.md:\d+"):
        read_examples(text)


def _anchors(markdown: str) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\]\(((?!https?:)[^)\s]+)\)", README))))
def test_every_link_of_the_readme_leads_somewhere(target: str) -> None:
    path, _, anchor = target.partition("#")
    page = REPO / path if path else REPO / "README.md"
    assert page.exists(), f"{path} does not exist"
    if anchor:
        assert anchor in _anchors(page.read_text()), f"{page.name} has no heading #{anchor}"
