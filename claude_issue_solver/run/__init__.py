"""One task's run: the pipeline (its phases, written once), the kinds of task, the agent, the tests,
the texts."""
