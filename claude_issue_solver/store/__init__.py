"""The queue: the state file, the tasks, their admission (budgets, fairness, holds) and how a run ends."""
