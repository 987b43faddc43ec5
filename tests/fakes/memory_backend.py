"""An in-memory place for the pipeline's unit tests: workspaces, processes, files and a remote in dicts.

It offers the same mechanics as the Docker and Daytona backends (:class:`Backend`), so the run policy
is tested once without Docker. Processes do nothing by themselves: a test gives each process name an
``Agent`` script that runs when the process starts (edit files, finish or not), finishes it later with
:meth:`MemoryBackend.finish`, and injects failures with :meth:`MemoryBackend.fail_next`. ``crash_at``
raises :class:`Crash` (a ``BaseException``, like the daemon being killed) inside a named operation.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from claude_issue_solver.backends.base import (
    BackendError,
    Changes,
    OutputBounds,
    OutputKeeper,
    ProcessOutput,
    ProcessSpec,
    Pushed,
    PushRejected,
    PushRequest,
    RebaseConflict,
    Rebased,
    Workspace,
    WorkspaceLost,
    WorkspaceSpec,
    checked_id,
)
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.store.queue import Task


class Crash(BaseException):
    """The daemon died here (not an error anything catches)."""


@dataclass(frozen=True)
class MemoryWorkspace(Workspace):
    """Nothing beyond the common fields: the place is found by the task id."""


@dataclass
class Process:
    spec: ProcessSpec
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    killed: bool = False


@dataclass
class Place:
    """One task's workspace: the tree as the agent left it, the last commit, the processes."""

    spec: WorkspaceSpec
    base_sha: str
    tree: dict[str, bytes]
    committed: dict[str, bytes]
    head: str
    unpushed: bool = False
    links: set[str] = field(default_factory=set)  # paths that are symbolic links (never read)
    processes: dict[str, Process] = field(default_factory=dict)
    # The branch's history as far as this place knows it: a remote head outside it means someone pushed.
    lineage: set[str] = field(default_factory=set)
    base_files: dict[str, bytes] = field(default_factory=dict)  # the tree at base_sha
    setup_from: str | None = None  # the saved setup (its key) the later processes start from
    from_default: bool = False  # started at the default branch's head (Workspace.from_default)
    ignored: set[str] = field(default_factory=set)  # paths (or directories) the repository's .gitignore names


Agent = Callable[[Place, Process], None]


def result_line(text: str = "Done.", *, ok: bool = True, turns: int = 2) -> str:
    """The last line of a ``claude -p --output-format stream-json`` run."""
    import json

    return json.dumps(
        {
            "type": "result",
            "subtype": "success",
            "is_error": not ok,
            "num_turns": turns,
            "result": text,
            "session_id": "session-1",
            "total_cost_usd": 0.01,
            "duration_ms": 1000,
        }
    )


def edits(files: dict[str, str], summary: str | None = None, *, finish: bool = True) -> Agent:
    """An agent that writes ``files`` (and the summary) and, with ``finish``, ends with success."""

    def run(place: Place, process: Process) -> None:
        for path, text in files.items():
            place.tree[path] = text.encode()
        if summary is not None:
            place.tree[".claude-pr-summary.md"] = summary.encode()
        if finish:
            process.exit_code = 0
            process.stdout = result_line() + "\n"

    return run


def _sha(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()


class MemoryBackend:
    name = "memory"
    poll_interval = 0.0
    keeps_dirs = True
    caches_setup = True
    relays = False

    def __init__(self, remote: dict[str, dict[str, str]] | None = None) -> None:
        # The remote: branch -> (sha, files). "main" holds a README to start with.
        self.remote: dict[str, tuple[str, dict[str, bytes]]] = {
            "main": (_sha("main"), {"README.md": b"# r\n"})
        }
        for branch, files in (remote or {}).items():
            self.remote[branch] = (_sha(branch, files), {k: v.encode() for k, v in files.items()})
        self.places: dict[str, Place] = {}
        self.agents: dict[str, Agent] = {}
        self.reject_pushes: str | None = None
        # Where a push lands besides ``remote`` (a loopback GitHub's repository, so a PR can be opened).
        self.on_push: Callable[[str, dict[str, bytes], str], str] | None = None
        self.calls: list[str] = []
        # Kept directories (KeptDir.key -> files), as the Docker backend keeps them under STATE_DIR.
        self.kept: dict[str, dict[str, bytes]] = {}
        # Saved setups: (repo, key) -> the files the setup process wrote into the tree (its ``made``).
        self.setups: dict[tuple[str, str], dict[str, bytes]] = {}
        self._failures: dict[str, list[BackendError]] = {}
        self._crashes: dict[str, int] = {}
        self._on_poll: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        # Commits a person pushed, per branch: (sha, author name), oldest first.
        self.pushed_by: dict[str, list[tuple[str, str]]] = {}

    # --- test controls ---------------------------------------------------------------------------

    def fail_next(self, operation: str, error: BackendError, count: int = 1) -> None:
        self._failures.setdefault(operation, []).extend([error] * count)

    def crash_at(self, operation: str, after: int = 0) -> None:
        """Raise Crash in ``operation`` once it has been called ``after`` times without crashing."""
        self._crashes[operation] = after

    def on_poll(self, action: Callable[[], None]) -> None:
        """Run ``action`` at every poll (e.g. move a test clock forward)."""
        self._on_poll.append(action)

    def finish(
        self, task_id: str, name: str = "agent", exit_code: int = 0, stdout: str | None = None
    ) -> None:
        process = self.places[task_id].processes[name]
        process.stdout = result_line() + "\n" if stdout is None else stdout
        process.exit_code = exit_code

    def _enter(self, operation: str) -> None:
        with self._lock:
            self.calls.append(operation)
            if operation in self._crashes:
                if self._crashes[operation] == 0:
                    del self._crashes[operation]
                    raise Crash(operation)
                self._crashes[operation] -= 1
            failures = self._failures.get(operation)
            if failures:
                raise failures.pop(0)

    def _place(self, workspace: Workspace) -> Place:
        place = self.places.get(workspace.task_id)
        if place is None:
            msg = f"workspace {workspace.handle} of task {workspace.task_id} no longer exists"
            raise WorkspaceLost(msg)
        return place

    # --- the backend ------------------------------------------------------------------------------

    def check(self) -> None:
        self._enter("check")

    def handle_for(self, task_id: str) -> str:
        return f"memory-{checked_id(task_id)}"

    def process_owner(self) -> tuple[int, int] | None:
        return None  # no file of this host is handed to its processes

    def prepare(self, spec: WorkspaceSpec, log: TaskLog) -> MemoryWorkspace:
        self._enter("prepare")
        place = self.places.get(spec.task_id)
        if place is None:
            start = spec.branch if spec.branch in self.remote else spec.default_branch
            if spec.start_ref is not None:
                if spec.start_ref not in self.remote:
                    raise BackendError(f"the remote has no {spec.start_ref}")
                start = spec.start_ref
            sha, files = self.remote[start]
            spec.credential()  # a real place fetches with it
            place = Place(spec, sha, dict(files), dict(files), sha, lineage={sha}, base_files=dict(files))
            place.from_default = sha == self.remote[spec.default_branch][0]
            self.places[spec.task_id] = place
            log.write(f"memory workspace for {spec.task_id} on {spec.branch} from {start}")
        return self._workspace(place)

    def _workspace(self, place: Place) -> MemoryWorkspace:
        spec = place.spec
        return MemoryWorkspace(
            spec.task_id,
            self.handle_for(spec.task_id),
            spec.repo,
            spec.issue_number,
            spec.branch,
            place.base_sha,
            from_default=place.from_default,
        )

    def attach(self, task: Task) -> MemoryWorkspace | None:
        self._enter("attach")
        place = self.places.get(task.id)
        return None if place is None else self._workspace(place)

    def remove(self, task_id: str, log: TaskLog | None = None) -> list[str]:
        self._enter("remove")
        return [f"memory workspace {task_id}"] if self.places.pop(task_id, None) is not None else []

    def list_ours(self) -> set[str]:
        self._enter("list_ours")
        return set(self.places)

    def kept_keys(self) -> set[str]:
        return set(self.kept)

    def forget_kept(self, key: str) -> bool:
        return self.kept.pop(key, None) is not None

    def save_setup(self, workspace: Workspace, process: str, key: str, log: TaskLog) -> str | None:
        self._enter("save_setup")
        place = self._place(workspace)
        # What the setup wrote into the tree: the untracked paths (the workspace's commit lacks them).
        made = {p: d for p, d in place.tree.items() if p not in place.committed}
        self.setups[(workspace.repo, key)] = made
        place.setup_from = key
        return f"memory setup {key[:12]}"

    def restore_setup(self, workspace: Workspace, key: str, log: TaskLog) -> str | None:
        self._enter("restore_setup")
        place = self._place(workspace)
        made = self.setups.get((workspace.repo, key))
        if made is None:
            return None
        place.tree.update(made)
        place.setup_from = key
        return f"memory setup {key[:12]}"

    def start_process(self, workspace: Workspace, process: ProcessSpec, log: TaskLog) -> bool:
        self._enter("start_process")
        place = self._place(workspace)
        if process.name in place.processes:
            return False
        running = Process(process)
        if process.keep is not None:
            self.kept.setdefault(process.keep.key, {})
        place.processes[process.name] = running
        agent = self.agents.get(process.name)
        if agent is not None:
            agent(place, running)
        return True

    def poll_process(self, workspace: Workspace, name: str) -> int | None:
        for action in self._on_poll:
            action()
        self._enter("poll_process")
        place = self._place(workspace)
        if name not in place.processes:
            msg = f"no process {name} in {workspace.handle}"
            raise WorkspaceLost(msg)
        return place.processes[name].exit_code

    def kill_process(self, workspace: Workspace, name: str) -> int | None:
        self._enter("kill_process")
        process = self._place(workspace).processes[name]
        process.killed = True
        if process.exit_code is None:
            process.exit_code = 137
        return process.exit_code

    def follow_output(self, workspace: Workspace, name: str, log: TaskLog) -> _Stream:
        self._enter("follow_output")
        return _Stream(self, workspace, name, log)

    def output(self, workspace: Workspace, name: str, bounds: OutputBounds) -> ProcessOutput:
        self._enter("output")
        process = self._place(workspace).processes[name]
        kept = [OutputKeeper(bounds), OutputKeeper(bounds)]
        for keeper, text in zip(kept, (process.stdout, process.stderr), strict=True):
            keeper.feed(text.encode())
        return ProcessOutput(kept[0].text(), kept[1].text(), kept[0].left_out + kept[1].left_out)

    def read_file(self, workspace: Workspace, path: str, limit: int) -> bytes | None:
        self._enter("read_file")
        place = self._place(workspace)
        if path in place.links:
            return None
        data = place.tree.get(path)
        return None if data is None else data[:limit]

    def write_file(self, workspace: Workspace, path: str, data: bytes) -> None:
        self._enter("write_file")
        self._place(workspace).tree[path] = data

    def delete_file(self, workspace: Workspace, path: str) -> None:
        self._enter("delete_file")
        place = self._place(workspace)
        place.tree.pop(path, None)
        place.links.discard(path)

    def changes(self, workspace: Workspace, exclude: tuple[str, ...]) -> Changes:
        self._enter("changes")
        place = self._place(workspace)
        files = sorted(
            p
            for p in set(place.tree) | set(place.committed)
            if place.tree.get(p) != place.committed.get(p)
            and not _excluded(p, exclude)
            and (p in place.committed or not _excluded(p, place.ignored))  # as git status: ignored unlisted
        )
        stat = "\n".join(f" {p} | 1 +" for p in files)
        return Changes(files=tuple(files), diffstat=stat, ahead=place.unpushed)

    def untracked(
        self, workspace: Workspace, glob: str | None = None, *, ignored: bool = True
    ) -> tuple[str, ...]:
        """As ``git ls-files --others [--directory]``; ``place.ignored`` names the ignored paths."""
        self._enter("untracked")
        place = self._place(workspace)
        others = sorted(
            p for p in place.tree if p not in place.committed and (ignored or not _excluded(p, place.ignored))
        )
        if glob:
            return tuple(p for p in others if fnmatch.fnmatchcase(p, glob.replace("**/", "*")))
        tracked_dirs = {
            "/".join(p.split("/")[:n]) for p in place.committed for n in range(1, p.count("/") + 1)
        }
        listed: list[str] = []
        for path in others:
            parts = path.split("/")
            entry = path
            for n in range(1, len(parts)):
                if "/".join(parts[:n]) not in tracked_dirs:
                    entry = "/".join(parts[:n]) + "/"
                    break
            if entry not in listed:
                listed.append(entry)
        return tuple(listed)

    def commit_and_push(self, workspace: Workspace, request: PushRequest, log: TaskLog) -> Pushed:
        self._enter("commit_and_push")
        place = self._place(workspace)
        tree = {
            p: d
            for p, d in place.tree.items()
            if not _excluded(p, request.exclude) and (p in place.committed or not _excluded(p, place.ignored))
        }
        committed = tree != place.committed
        if committed:
            place.committed = tree
            place.head = _sha(place.head, tree, request.message)
            place.unpushed = True
        if self.reject_pushes is not None:
            msg = f"the remote refused the push of {request.branch}: {self.reject_pushes}"
            raise PushRejected(msg)
        there = self.remote.get(request.branch)
        if there is not None and there[0] not in place.lineage and there[0] != place.head:
            msg = f"the remote refused the push of {request.branch}: [rejected] (fetch first)"
            raise PushRejected(msg, moved=True)
        self._enter("push")  # a crash between the commit and the push
        if self.on_push is not None:
            place.head = self.on_push(request.branch, dict(place.committed), request.message)
        self.remote[request.branch] = (place.head, dict(place.committed))
        place.lineage.add(place.head)
        place.unpushed = False
        return Pushed(place.head, committed)

    # --- a person pushing to the branch meanwhile -----------------------------------------------------

    def push_as(self, author: str, branch: str, files: dict[str, str], sha: str | None = None) -> str:
        """A person pushes ``files`` (changes on top of the branch) to the remote's ``branch``.

        ``sha``: the commit's sha where it really landed (a loopback GitHub's ``commit_files``).
        """
        head, tree = self.remote.get(branch, self.remote["main"])
        tree = {**tree, **{k: v.encode() for k, v in files.items()}}
        sha = sha or _sha(head, tree, author)
        self.remote[branch] = (sha, tree)
        self.pushed_by.setdefault(branch, []).append((sha, author))
        return sha

    def rebase_onto_remote(self, workspace: Workspace, request: PushRequest, log: TaskLog) -> Rebased:
        self._enter("rebase_onto_remote")
        place = self._place(workspace)
        branch = request.branch
        onto, theirs = self.remote[branch]
        base, ours = place.base_files, place.committed
        changed = {p for p in set(base) | set(ours) if base.get(p) != ours.get(p)}
        conflicts = sorted(
            p for p in changed if theirs.get(p) != base.get(p) and theirs.get(p) != ours.get(p)
        )
        if conflicts:
            msg = f"{place.head[:12]} conflicts with {onto[:12]} in {', '.join(conflicts)}"
            raise RebaseConflict(msg, conflicts)
        merged = {p: d for p, d in theirs.items() if p not in changed}
        merged.update({p: ours[p] for p in changed if p in ours})
        new = [(s, a) for s, a in self.pushed_by.get(branch, []) if s not in place.lineage]
        place.committed, place.tree = merged, dict(merged)
        place.head = _sha(onto, merged)
        place.base_sha, place.base_files = onto, dict(theirs)
        place.lineage.add(onto)
        place.unpushed = True
        authors = tuple(dict.fromkeys(a for _s, a in new))
        return Rebased(place.head, onto, len(new), authors, replayed=1 if changed else 0)


class _Stream:
    def __init__(self, backend: MemoryBackend, workspace: Workspace, name: str, log: TaskLog) -> None:
        self.backend, self.workspace, self.name, self.log = backend, workspace, name, log
        self.closed: bool | None = None

    def close(self, *, finished: bool) -> None:
        self.closed = finished
        place = self.backend.places.get(self.workspace.task_id)
        if finished and place is not None and self.name in place.processes:
            self.log.write_raw(place.processes[self.name].stdout)


def _excluded(path: str, exclude: tuple[str, ...] | set[str]) -> bool:
    """As a git pathspec: a path, or anything under a directory of that name."""
    return any(path == e.rstrip("/") or path.startswith(e.rstrip("/") + "/") for e in exclude)
