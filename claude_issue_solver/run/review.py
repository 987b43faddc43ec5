"""A pull request's review, the policy: the result's JSON schema and its check, the prompt, and which
findings become inline comments.

The agent answers with structured output (the CLI's ``--json-schema``: the validated object comes back
as ``structured_output`` in the result) — a summary and findings, each with a path, a line (and an
optional start line), a side, a severity, a title, a body and an optional replacement for a
``suggestion`` block. We check it again here (:func:`check`). Findings are placed against the diff:
one on a line GitHub cannot anchor goes into the review's body, never dropped; at most
:data:`MAX_INLINE` inline comments, most severe first, the rest in the body too. A finding already
posted (its key, :func:`finding_key`, in a hidden marker of an earlier review) is not posted again.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import string
from dataclasses import dataclass
from importlib import resources
from typing import Any

from claude_issue_solver.github.markers import marker
from claude_issue_solver.github.reviews import finding_marker, head_marker

__all__ = [
    "MAX_DIFF_CHARS",
    "MAX_INLINE",
    "SCHEMA",
    "Finding",
    "Placed",
    "build_prompt",
    "check",
    "diff_lines",
    "finding_key",
    "place",
    "review_body",
]

MAX_DIFF_CHARS = 60_000  # the diff the prompt carries; beyond it, the list of files
MAX_INLINE = 20
SEVERITIES = ("critical", "major", "minor", "nit")
_ICONS = {"critical": "🔴", "major": "🟠", "minor": "🟡", "nit": "⚪"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "findings"],
    "properties": {
        "summary": {"type": "string", "description": "What the pull request does and the review's verdict"},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "line", "severity", "title", "body"],
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the repository root"},
                    "line": {"type": "integer", "minimum": 1, "description": "Line in the new file"},
                    "start_line": {"type": "integer", "minimum": 1},
                    "side": {"type": "string", "enum": ["RIGHT", "LEFT"]},
                    "severity": {"type": "string", "enum": list(SEVERITIES)},
                    "title": {"type": "string"},
                    "body": {"type": "string"},
                    "suggestion": {"type": "string", "description": "Replacement text for the lines"},
                },
            },
        },
    },
}


class ReviewError(Exception):
    """The agent's answer is not a review (no structured output, or not of the schema)."""


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    severity: str
    title: str
    body: str
    side: str = "RIGHT"
    start_line: int | None = None
    suggestion: str | None = None

    @property
    def key(self) -> str:
        return finding_key(self.path, self.title)


def finding_key(path: str, title: str) -> str:
    """What identifies a finding across re-reviews (lines move with new commits; the file and what it
    says do not)."""
    norm = re.sub(r"\s+", " ", title.strip().lower())
    return hashlib.sha256(f"{path.strip()}\n{norm}".encode()).hexdigest()[:16]


def check(output: Any) -> tuple[str, list[Finding]]:
    """The structured output as (summary, findings); :class:`ReviewError` when it is not of the schema."""
    if not isinstance(output, dict) or not isinstance(output.get("summary"), str):
        raise ReviewError("the agent returned no review (no structured output with a summary)")
    raw = output.get("findings")
    if not isinstance(raw, list):
        raise ReviewError("the review's findings are not a list")
    allowed = set(SCHEMA["properties"]["findings"]["items"]["properties"])
    found = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - allowed:
            raise ReviewError(f"finding {i + 1} is not of the schema")
        for key in ("path", "title", "body"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ReviewError(f"finding {i + 1} has no {key}")
        line, start = item.get("line"), item.get("start_line")
        if not isinstance(line, int) or isinstance(line, bool) or line < 1:
            raise ReviewError(f"finding {i + 1} has no line")
        if start is not None and (not isinstance(start, int) or isinstance(start, bool) or start < 1):
            raise ReviewError(f"finding {i + 1} has a bad start_line")
        severity, side = item.get("severity"), item.get("side", "RIGHT")
        if severity not in SEVERITIES or side not in ("RIGHT", "LEFT"):
            raise ReviewError(f"finding {i + 1} has a bad severity or side")
        suggestion = item.get("suggestion")
        found.append(
            Finding(
                path=item["path"].strip().removeprefix("./"),
                line=line,
                severity=severity,
                title=item["title"].strip(),
                body=item["body"].strip(),
                side=side,
                start_line=start if start is not None and start < line else None,
                suggestion=suggestion if isinstance(suggestion, str) else None,
            )
        )
    return output["summary"].strip(), found


# --- the diff ---------------------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def diff_lines(diff: str) -> dict[str, dict[str, set[int]]]:
    """path -> {"RIGHT": the new side's lines in its hunks, "LEFT": the old side's}: where GitHub
    anchors a comment."""
    files: dict[str, dict[str, set[int]]] = {}
    current: dict[str, set[int]] | None = None
    old = new = 0
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("+++ "):
            path = line[4:]
            if path != "/dev/null":
                current = files.setdefault(path.removeprefix("b/"), {"RIGHT": set(), "LEFT": set()})
        elif line.startswith("--- "):
            continue
        elif (hunk := _HUNK.match(line)) is not None:
            old, new = int(hunk[1]), int(hunk[3])
        elif current is not None and line[:1] in ("+", "-", " "):
            if line[:1] == "+":
                current["RIGHT"].add(new)
                new += 1
            elif line[:1] == "-":
                current["LEFT"].add(old)
                old += 1
            else:
                current["RIGHT"].add(new)
                current["LEFT"].add(old)
                old, new = old + 1, new + 1
    return files


def diff_files(diff: str) -> list[str]:
    return [line[6:] for line in diff.splitlines() if line.startswith("+++ b/")]


# --- placing the findings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    inline: list[Finding]  # anchored on a line of the diff
    in_body: list[Finding]  # not anchorable, or beyond MAX_INLINE
    repeated: list[Finding]  # posted by an earlier review: not again


def place(findings: list[Finding], diff: str, posted: set[str], max_inline: int = MAX_INLINE) -> Placed:
    lines = diff_lines(diff)
    order = sorted(findings, key=lambda f: SEVERITIES.index(f.severity))
    inline: list[Finding] = []
    in_body: list[Finding] = []
    repeated: list[Finding] = []
    keys: set[str] = set()
    for finding in order:
        if finding.key in posted or finding.key in keys:
            repeated.append(finding)
            continue
        keys.add(finding.key)
        where = lines.get(finding.path, {}).get(finding.side, set())
        anchored = finding.line in where and (finding.start_line is None or finding.start_line in where)
        (inline if anchored and len(inline) < max_inline else in_body).append(finding)
    return Placed(inline, in_body, repeated)


def comment_body(finding: Finding) -> str:
    text = f"{_ICONS[finding.severity]} **{finding.severity}: {finding.title}**\n\n{finding.body}"
    if finding.suggestion is not None and finding.side == "RIGHT":
        fence = "````" if "```" in finding.suggestion else "```"
        text += f"\n\n{fence}suggestion\n{finding.suggestion.rstrip(chr(10))}\n{fence}"
    return f"{text}\n\n{finding_marker(finding.key)}"


def comments(placed: Placed) -> list[dict[str, Any]]:
    out = []
    for f in placed.inline:
        c: dict[str, Any] = {"path": f.path, "line": f.line, "side": f.side, "body": comment_body(f)}
        if f.start_line is not None:
            c.update(start_line=f.start_line, start_side=f.side)
        out.append(c)
    return out


def review_body(
    task_id: str,
    summary: str,
    placed: Placed,
    *,
    head: str,
    since: str | None,
    cost: str | None,
    agent_name: str,
) -> str:
    counts = {s: 0 for s in SEVERITIES}
    for f in [*placed.inline, *placed.in_body]:
        counts[f.severity] += 1
    found = ", ".join(f"{_ICONS[s]} {n} {s}" for s, n in counts.items() if n) or "no new findings"
    what = f"the commits since `{since[:12]}`, up to `{head[:12]}`" if since else f"`{head[:12]}`"
    lines = [f"🤖 **{agent_name} reviewed {what}**: {found}.", "", summary]
    if placed.in_body:
        lines += ["", "**Findings not on a line of the diff** (or beyond the inline limit):", ""]
        for f in placed.in_body:
            lines.append(
                f"- {_ICONS[f.severity]} **{f.severity}: {f.title}** — `{f.path}:{f.line}`: "
                f"{f.body} {finding_marker(f.key)}"
            )
    if placed.repeated:
        lines += [
            "",
            f"{len(placed.repeated)} finding(s) already raised in an earlier review are not repeated.",
        ]
    tail = (
        f"Task `{task_id}`" + (f", cost {cost}" if cost else "") + ". This review never approves or blocks."
    )
    lines += ["", f"<sub>{tail}</sub>", "", head_marker(head), marker(task_id)]
    return "\n".join(lines)


# --- the prompt -------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def cut_diff(diff: str, limit: int = MAX_DIFF_CHARS) -> str:
    if len(diff) <= limit:
        return diff
    names = "\n".join(f"- {name}" for name in diff_files(diff))
    return (
        f"{diff[:limit]}\n… (the diff was cut at {limit} characters; every file it changes:)\n{names}\n"
        "Read the rest with `git diff` in the repository."
    )


def load_template(path: pathlib.Path | None) -> str:
    """``REVIEW_PROMPT`` (a template file of the operator's) if set, else the packaged ``review.md``."""
    if path is not None:
        try:
            return pathlib.Path(path).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"cannot read the review prompt template {str(path)!r} (REVIEW_PROMPT): {exc}"
            raise ReviewError(msg) from None
    return (resources.files("claude_issue_solver") / "templates" / "review.md").read_text(encoding="utf-8")


def build_prompt(
    *,
    repo: str,
    number: int,
    url: str,
    title: str,
    description: str,
    author: str,
    head: str,
    diff: str,
    request: str,
    requested_by: str,
    since: str | None,
    commits: list[dict[str, str]],
    template: pathlib.Path | None = None,
) -> str:
    """The review's prompt: ours, with the pull request's words (title, description, diff, the request)
    inside boundaries whose markers carry a digest of what they enclose."""
    text = string.Template(load_template(template))
    pr_text = f"Title: {title}\n\n{description.strip() or '(no description)'}"
    shown = cut_diff(diff)
    if since:
        listed = "\n".join(f"- {c['sha'][:12]} {c['subject']}" for c in commits) or "(none listed)"
        incremental = (
            f"This is a re-review. The last review looked at commit {since}. The commits since:\n{listed}\n"
            f"Review what changed since then (`git diff {since}..HEAD`); findings already raised are "
            "filtered out for you, so report what you see without worrying about repeats."
        )
    else:
        incremental = "This is the first review of this pull request."
    values = {
        "repo": repo,
        "number": str(number),
        "url": url,
        "author": author or "unknown",
        "head": head,
        "pr": pr_text,
        "pr_boundary": f"UNTRUSTED PULL REQUEST {_digest(pr_text)}",
        "diff": shown,
        "diff_boundary": f"UNTRUSTED DIFF {_digest(shown)}",
        "request": request or "(no text: a label or the pull request's opening asked for the review)",
        "requested_by": requested_by or "unknown",
        "request_boundary": f"REVIEW REQUEST {_digest(request)}",
        "incremental": incremental,
        "severities": ", ".join(SEVERITIES),
    }
    return text.safe_substitute(values)
