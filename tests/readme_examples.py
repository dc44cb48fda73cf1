"""The README's example blocks, read from its Markdown, with the rule written before each.

A ```bash or ```python block runs against a local stack unless the line right before its fence is one
of these comments (any other ``<!-- example ... -->`` comment is an error, so a typo cannot skip a block):

- ``<!-- example not run: why -->``: not run (it starts a stack, needs Docker, a cluster ...).
- ``<!-- example with the default model: module:Class -->``: its rows are that model's; it runs only
  while that model is served.
- ``<!-- example with API keys -->``: runs against a stack with ``API_KEYS`` set, ``MY_KEY`` exported.
- ``<!-- example model: name -->``: a Python block that is a model module, served by a lone worker.
- ``<!-- example against model: name -->``: runs against that worker.
- ``<!-- example needs: package -->``: skipped when that Python package is not installed.

A ```json block right after an example is the answer it prints: the real one must have the same fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README_PATH = Path(__file__).resolve().parent.parent / "README.md"
RUN_LANGUAGES = ("bash", "python")
RULES = ("not run", "with the default model", "with API keys", "model", "against model", "needs")
_MARKER = re.compile(r"^<!-- example (?P<rule>[^:]+?)(?::\s*(?P<argument>.*?))?\s*-->\s*$")
#: The README's gateway address, in every form its examples write it.
README_ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):8080\b")


@dataclass(frozen=True)
class Rule:
    name: str  # one of RULES
    argument: str  # what follows the colon: a reason, a model, a package; empty for "with API keys"


@dataclass(frozen=True)
class Example:
    line: int  # the README line of its opening fence
    language: str
    code: str
    rule: Rule | None
    answer: str | None  # the ```json block printed right after it, if any

    @property
    def name(self) -> str:
        return f"README.md:{self.line}-{self.language}"

    def code_for(self, address: str) -> str:
        """The block as written, the README's gateway address replaced by ``address`` (host:port)."""
        return README_ADDRESS.sub(address, self.code)


def parse_rule(comment: str, line: int) -> Rule | None:
    """The rule of an ``<!-- example ... -->`` comment; None for any other line."""
    match = _MARKER.match(comment)
    if match is None:
        if comment.startswith("<!-- example"):
            raise ValueError(f"README.md:{line}: unreadable example comment {comment!r}")
        return None
    rule = Rule(match["rule"].strip(), (match["argument"] or "").strip())
    if rule.name not in RULES:
        raise ValueError(f"README.md:{line}: unknown example rule {rule.name!r}; known: {', '.join(RULES)}")
    if not rule.argument and rule.name != "with API keys":
        raise ValueError(f"README.md:{line}: the rule {rule.name!r} needs an argument after a colon")
    return rule


def read_examples(text: str) -> list[Example]:
    """Every ```bash and ```python block of ``text``, with its rule and the JSON answer shown after it."""
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        following = lines[number] if number < len(lines) else ""
        if line.startswith("<!-- example") and following[3:].strip() not in RUN_LANGUAGES:
            raise ValueError(f"README.md:{number}: an example comment must stand right before a bash or python block")
    examples: list[Example] = []
    last_end = -1  # the index of the closing fence of the last example
    index = 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        language = lines[index][3:].strip()
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{index + 1}: a code block is never closed")
        code = "\n".join(lines[index + 1:end]) + "\n"
        if language in RUN_LANGUAGES:
            rule = parse_rule(lines[index - 1], index) if index > 0 else None
            examples.append(Example(index + 1, language, code, rule, None))
            last_end = end
        elif language == "json" and index == last_end + 1:
            previous = examples[-1]
            examples[-1] = Example(previous.line, previous.language, previous.code, previous.rule, code)
        index = end + 1
    return examples


def readme_examples() -> list[Example]:
    return read_examples(README_PATH.read_text())
