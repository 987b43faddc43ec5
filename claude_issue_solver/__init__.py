"""claude-issue-solver: turn GitHub issues labelled ``Claude`` into pull requests."""

__version__ = "0.1.0"
