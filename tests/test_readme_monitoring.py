"""The README's Monitoring commands (section "From the command line", its first bash block) as a test
reads them. tests/test_kept_cloud.py runs every one on `fedstep local --keep-running`'s cloud; the
tests here keep the block in the form that makes that possible, so a command added later is run too.

The form: one `fedstep` command per line, its comment after ` # `. `<run>` stands for a run id,
`[...]` for an optional part, a bare `...` for arguments (a line below it then gives a complete
example, which is what runs), and `(exit N` in the comment is the exit code expected (default 0).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = "### From the command line"


@dataclass(frozen=True)
class Command:
    text: str
    """The command as written, without its comment."""
    comment: str

    @property
    def words(self) -> list[str]:
        """Shell words, quotes kept (so a quoted "..." is an argument, not the placeholder)."""
        return shlex.split(self.text, posix=False)

    @property
    def is_template(self) -> bool:
        """A bare `...` stands for arguments: the line shows a form, not a command to run."""
        return "..." in self.words

    @property
    def subcommand(self) -> str:
        return self.words[1]

    @property
    def expected_code(self) -> int:
        found = re.search(r"\(exit (\d+)", self.comment)
        return int(found.group(1)) if found else 0

    def runnable(self, run_id: str) -> str:
        """The command with `<run>` as `run_id` and its optional `[...]` parts left out."""
        return re.sub(r"\s*\[[^\]]*\]", "", self.text).replace("<run>", run_id)

    def example_in(self, commands: list[Command]) -> Command | None:
        """The first complete command below this template of the same form: the template's words
        before `...` begin it and the words after end it."""
        words = self.words
        cut = words.index("...")
        head, tail = words[:cut], words[cut + 1 :]
        for other in commands:
            w = other.words
            fits = len(w) > len(head) + len(tail) and w[: len(head)] == head and (not tail or w[-len(tail) :] == tail)
            if fits and not other.is_template:
                return other
        return None


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) of a line: the comment starts at the first ` #` outside quotes."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1 :].strip()
    return line.strip(), ""


def monitoring_commands(readme: Path = REPO / "README.md") -> list[Command]:
    """Every line of the first bash block of the README's section "From the command line"."""
    text = readme.read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"^```bash\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert block, f"README.md: no ```bash block under {SECTION!r}"
    return [Command(*split_comment(line)) for line in block.group(1).splitlines() if line.strip()]


def test_every_line_of_the_monitoring_block_is_one_fedstep_command_with_its_comment():
    commands = monitoring_commands()
    assert len(commands) >= 7
    for command in commands:
        assert command.words[0] == "fedstep" and len(command.words) >= 2, command.text
        assert command.comment, f"{command.text!r}: say what it does after ' # '"
        assert "#" not in command.text and "\n" not in command.text


def test_every_line_with_a_bare_ellipsis_has_a_complete_example_below_it():
    commands = monitoring_commands()
    templates = [c for c in commands if c.is_template]
    assert templates, "the block shows `fedstep start ... --watch`"
    for template in templates:
        example = template.example_in(commands[commands.index(template) + 1 :])
        assert example is not None, f"{template.text!r}: add a complete example of it on a line below"
        assert "<" not in example.text, example.text


def test_a_command_runs_with_the_run_id_for_its_placeholder_and_without_its_optional_parts():
    command = Command(*split_comment("fedstep download <run> [--round r]   # the model (exit 2 if none)"))
    assert command.runnable("run-1") == "fedstep download run-1"
    assert command.expected_code == 2 and command.subcommand == "download"
    stop = Command(*split_comment('fedstep stop <run> --reason "..."  # abort # a run'))
    assert not stop.is_template and stop.comment == "abort # a run"
    template = Command(*split_comment("fedstep start ... --watch  # start (exit 0 if it succeeds)"))
    example = Command("fedstep start --model m:f --rounds 2 --watch", "")
    assert template.is_template and template.example_in([template, example]) is example
    assert template.example_in([Command("fedstep start --model m:f", "")]) is None
