"""Host-side git: one bare mirror per repository, a worktree per task, commit, push, and the replay of
a task's commits onto a branch that moved on the remote (object-level: nothing of the worktree runs).

(:mod:`.hardening`: how git runs here; :mod:`.mirror`: mirrors and worktrees; :mod:`.worktree`: changes,
commit and push; :mod:`.replay`: a moved branch; :mod:`.remove`: removing a tree.)

Every command is an argv list (never a shell string) and runs with the user's credential helpers and
terminal prompts switched off. A GitHub credential reaches exactly one git process, through
``GIT_ASKPASS`` and that process's environment: never argv, a URL, ``.git/config`` or an error message.

Commands in a worktree name its git directory explicitly (``--git-dir``/``--work-tree``) instead of
letting git discover ``.git``: the agent owns the worktree and could point ``.git`` at a config of its
own (``core.fsmonitor`` runs a command), which host-side git, perhaps running as root, would obey.

Nor does host git interpret anything else the agent wrote (issue #18). Only the mirror's config and
our ``-c`` options apply: no system, global or XDG config or attributes of the daemon's user, no
``GIT_CONFIG_*`` of its environment. Submodules are never recursed into: a ``git status`` that looks
into a gitlink's directory runs ``git status`` there, under the config (filters, fsmonitor) the agent
put in that directory's ``.git``. The mirror's ``info/attributes`` switches filters off whatever the
tree's ``.gitattributes`` says. And nested repositories the agent made, and submodule paths, are fenced
off (:func:`find_fence`): never looked into, staged or committed -- a nested repository would become a
gitlink, which the next run's status would look into -- and named in :attr:`Fence.left_out`.
"""

from __future__ import annotations

from claude_issue_solver.backends.git.hardening import (
    GIT_TIMEOUT,
    LOCK_TIMEOUT,
    MIRROR_ATTRIBUTES,
    NESTED_REPOSITORY,
    SUBMODULE,
    Fence,
    GitConflict,
    GitError,
    GitPushRejected,
    LeftOut,
    find_fence,
    run_git,
    tree_options,
)
from claude_issue_solver.backends.git.mirror import (
    add_worktree,
    ensure_mirror,
    fetch_ref,
    mirror_lock,
    remote_branch_exists,
    remove_worktree,
    rev_parse,
    start_point,
    worktree_git_dir,
    worktree_holding,
)
from claude_issue_solver.backends.git.remove import force_rmtree
from claude_issue_solver.backends.git.replay import (
    REPLAY_GIT,
    Moved,
    can_replay,
    create_bundle,
    fetch_branch,
    fetch_bundle,
    git_version,
    replay_onto,
    reset_worktree,
)
from claude_issue_solver.backends.git.worktree import (
    ahead_of_remote,
    commit_all,
    current_branch,
    diffstat,
    push,
    status_changes,
    untracked,
)

__all__ = [
    "GIT_TIMEOUT",
    "LOCK_TIMEOUT",
    "MIRROR_ATTRIBUTES",
    "NESTED_REPOSITORY",
    "REPLAY_GIT",
    "SUBMODULE",
    "Fence",
    "GitConflict",
    "GitError",
    "GitPushRejected",
    "LeftOut",
    "Moved",
    "add_worktree",
    "ahead_of_remote",
    "can_replay",
    "commit_all",
    "create_bundle",
    "current_branch",
    "diffstat",
    "ensure_mirror",
    "fetch_branch",
    "fetch_bundle",
    "fetch_ref",
    "find_fence",
    "force_rmtree",
    "git_version",
    "mirror_lock",
    "push",
    "remote_branch_exists",
    "remove_worktree",
    "replay_onto",
    "reset_worktree",
    "rev_parse",
    "run_git",
    "start_point",
    "status_changes",
    "tree_options",
    "untracked",
    "worktree_git_dir",
    "worktree_holding",
]
