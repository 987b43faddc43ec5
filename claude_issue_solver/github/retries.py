"""PyGithub's retries of a work request, kept inside the request budget and the whole client's pauses.

PyGithub's own ``GithubRetry`` sleeps out a secondary rate limit (``Retry-After``, or 60 s) in the one
thread and sends the request again, while every other thread of the daemon goes on sending: GitHub's
"wait" reached one request, not the client. Its retries of a 5xx were also sent back to back, outside
``GITHUB_REQUESTS_PER_MINUTE``. This policy retries only what a moment can fix (5xx, a dropped
connection), after a back-off on the client's (injectable) clock, each retry taking a slot of the budget
like any request; a rate-limit answer (403/429) is never retried here: it comes back at once and pauses
every request of the client (:meth:`GitHubClient._rate_limited`).

Imported when a PyGithub client is made (urllib3 comes with it), not with the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from urllib3.util.retry import Retry

RETRIES = 3
BACKOFF_FACTOR = 0.5  # urllib3: none before the first retry, then 1 s, 2 s
RETRIED_STATUSES = frozenset({500, 502, 503, 504})
# The methods PyGithub's GithubRetry retried, unchanged: the idempotent ones, and POST.
RETRIED_METHODS = Retry.DEFAULT_ALLOWED_METHODS | {"GET", "POST"}


class BudgetedRetry(Retry):
    """urllib3's ``Retry`` whose wait before a retry is ``before_retry(backoff)``: the client sleeps the
    back-off on its own clock and takes a budget slot (or raises, when GitHub asked the client to wait).

    urllib3 calls :meth:`sleep` right before every retry it sends, after a retryable status and after a
    connection error alike; ``new`` carries the hook to the copies urllib3 makes as it counts."""

    def __init__(self, *, before_retry: Callable[[float], None] | None = None, **kwargs: Any) -> None:
        self.before_retry = before_retry
        super().__init__(**kwargs)

    def new(self, **kw: Any) -> BudgetedRetry:
        kw.setdefault("before_retry", self.before_retry)
        return super().new(**kw)  # type: ignore[return-value]

    def sleep(self, response: Any = None) -> None:
        if self.before_retry is None:
            super().sleep(response)
            return
        self.before_retry(self.get_backoff_time())


def budgeted_retry(before_retry: Callable[[float], None]) -> BudgetedRetry:
    return BudgetedRetry(
        before_retry=before_retry,
        total=RETRIES,
        backoff_factor=BACKOFF_FACTOR,
        status_forcelist=RETRIED_STATUSES,
        allowed_methods=RETRIED_METHODS,
        # 403/429 are not in the list, and a Retry-After never makes urllib3 retry on its own: the
        # answer comes back to the client, which pauses all its requests for it.
        respect_retry_after_header=False,
        # The last 5xx comes back as an answer (classified "GitHub answered 502"), not as a RetryError
        # that reads like an unreachable host.
        raise_on_status=False,
    )
