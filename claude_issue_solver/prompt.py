"""The prompt Claude Code gets for an issue, and the PR summary it leaves behind.

Templates are ``string.Template`` files chosen by the issue's labels. A user's template directory
overrides any of them by file name; the packaged ones fill the gaps.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import string
from dataclasses import dataclass
from importlib import resources

from claude_issue_solver.conventions import SUMMARY_FILE

__all__ = [
    "SUMMARY_FILE",
    "TEMPLATE_NAMES",
    "IssueComment",
    "IssueContext",
    "PromptError",
    "PromptTemplateError",
    "SummaryError",
    "build_prompt",
    "format_comments",
    "load_template",
    "parse_summary",
    "select_template",
]

TEMPLATE_NAMES = ("bug", "enhancement", "documentation", "default")
MAX_TITLE_CHARS = 256

# Checked in this order, so an issue labelled both "documentation" and "bug" gets the bug template.
_LABEL_TEMPLATES = (
    ("bug", "bug"),
    ("enhancement", "enhancement"),
    ("feature", "enhancement"),
    ("documentation", "documentation"),
    ("docs", "documentation"),
)


class PromptError(Exception):
    """Base class for errors raised by this module."""


class PromptTemplateError(PromptError):
    """A prompt template cannot be found or read."""


class SummaryError(PromptError, ValueError):
    """The PR summary file Claude wrote is unusable."""


@dataclass(frozen=True)
class IssueComment:
    author: str
    body: str
    created_at: str = ""


@dataclass(frozen=True)
class IssueContext:
    repo: str
    number: int
    title: str
    body: str
    labels: tuple[str, ...] = ()
    author: str = ""
    comments: tuple[IssueComment, ...] = ()
    url: str = ""


def select_template(labels: tuple[str, ...] | list[str]) -> str:
    """The template name for an issue's labels: bug, enhancement, documentation or default."""
    present = {label.strip().casefold() for label in labels}
    for label, template in _LABEL_TEMPLATES:
        if label in present:
            return template
    return "default"


def load_template(name: str, template_dir: pathlib.Path | None = None) -> str:
    """The text of template ``name``: the user's copy if there is one, else the packaged one."""
    if name not in TEMPLATE_NAMES:
        msg = f"unknown prompt template {name!r}; expected one of {TEMPLATE_NAMES}"
        raise PromptTemplateError(msg)
    file_name = f"{name}.md"
    if template_dir is not None:
        directory = pathlib.Path(template_dir).expanduser()
        if not directory.is_dir():
            msg = f"PROMPT_TEMPLATE_DIR {str(directory)!r} is not a directory"
            raise PromptTemplateError(msg)
        candidate = directory / file_name
        if candidate.is_file():
            try:
                return candidate.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                msg = f"cannot read prompt template {str(candidate)!r}: {exc}"
                raise PromptTemplateError(msg) from exc
    try:
        return (resources.files("claude_issue_solver") / "templates" / file_name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"the packaged prompt template {file_name!r} is missing or unreadable: {exc}"
        raise PromptTemplateError(msg) from exc


def format_comments(comments: tuple[IssueComment, ...]) -> str:
    """A readable list of comments, each body verbatim, or "(none)"."""
    if not comments:
        return "(none)"
    blocks = []
    for comment in comments:
        when = f" at {comment.created_at}" if comment.created_at else ""
        blocks.append(f"--- comment by @{comment.author or 'unknown'}{when} ---\n{comment.body}")
    return "\n\n".join(blocks)


def _boundary(issue: IssueContext, comments: str) -> str:
    # The marker around the untrusted text carries a digest of that text, so the text cannot contain
    # the marker that closes it and pretend that its remainder comes from us.
    digest = hashlib.sha256()
    for part in (issue.title, issue.body, comments, *issue.labels):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return f"UNTRUSTED ISSUE CONTENT {digest.hexdigest()[:16]}"


def build_prompt(issue: IssueContext, *, template_dir: pathlib.Path | None = None) -> str:
    """The prompt for ``issue``, from the template its labels select."""
    template = string.Template(load_template(select_template(issue.labels), template_dir))
    comments = format_comments(issue.comments)
    values = {
        "repo": issue.repo,
        "number": str(issue.number),
        "title": issue.title,
        "body": issue.body if issue.body.strip() else "(no description)",
        "labels": ", ".join(issue.labels) if issue.labels else "(none)",
        "author": issue.author or "unknown",
        "comments": comments,
        "url": issue.url or f"https://github.com/{issue.repo}/issues/{issue.number}",
        "summary_file": SUMMARY_FILE,
        "boundary": _boundary(issue, comments),
    }
    # One safe_substitute pass: inserted values are never scanned again, so "$title" inside the body
    # stays literal, and a stray "$" in a user's template is left alone instead of raising.
    return template.safe_substitute(values)


_HEADING = re.compile(r"^#+\s+")


def parse_summary(text: str) -> tuple[str, str]:
    """(title, body) from the summary file: first line is the title, the rest the description."""
    lines = text.lstrip("\ufeff").strip().splitlines()
    if not lines:
        msg = f"{SUMMARY_FILE} is empty"
        raise SummaryError(msg)
    title = _HEADING.sub("", lines[0].strip()).strip()
    if not title or title == "#":
        msg = f"the first line of {SUMMARY_FILE} should be the PR title but is {lines[0]!r}"
        raise SummaryError(msg)
    if len(title) > MAX_TITLE_CHARS:
        title = title[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    body = "\n".join(lines[1:]).strip()
    return title, body
