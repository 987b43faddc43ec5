# The daemon itself as a container (the agent's image is Dockerfile.claude, which the daemon builds).
#   docker build -t claude-issue-solver .
#   docker compose -f contrib/docker-compose.yml up -d --build        # see INSTALL.md, "As a container"
# It needs the host's Docker socket, and STATE_DIR bind-mounted at the same absolute path as on the
# host: the daemon hands worktree paths under STATE_DIR to the host's Docker daemon as mount sources.
#
# Any Debian or Ubuntu base works: Python >= 3.11 and venv come from the distribution when the base has
# none (CI builds on a debootstrapped Debian, since no registry is reachable there).
# Without a registry (offline, or Docker Hub blocked), name a base image you already have:
#   docker build --build-arg BASE_IMAGE=debian:bookworm -t claude-issue-solver .
# (`docker images` lists them). A Docker without a bridge network (dockerd --bridge=none) builds with
# `docker build --network host ...`: apt and pip need the network during the build.
# The Daytona backend's SDK is an optional extra: --build-arg EXTRAS=daytona.
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}
ARG EXTRAS=

USER root
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# git for the host-side mirrors, worktrees, commits and pushes; Python only when the base lacks a usable
# one (Debian's python3 is "externally managed", hence the venv below either way).
RUN set -eu; \
    pkgs="git ca-certificates"; \
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || ! python3 -m venv /tmp/venv-probe >/dev/null 2>&1; then \
        pkgs="$pkgs python3 python3-venv"; \
    fi; \
    rm -rf /tmp/venv-probe; \
    echo "Dockerfile: installing: $pkgs"; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), f"Python >= 3.11 needed, the base has {sys.version}"'

# The dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change, not
# on every code change.
COPY pyproject.toml /src/
RUN python3 -m venv /opt/claude-issue-solver \
    && EXTRAS="$EXTRAS" python3 -c 'import os, tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; extras = [e for e in os.environ["EXTRAS"].replace(",", " ").split() if e]; print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
        > /tmp/requirements.txt \
    && /opt/claude-issue-solver/bin/pip install --quiet -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package (data/ holds symlinks to Dockerfile.claude and the systemd unit, hence those two files).
COPY README.md LICENSE Dockerfile.claude /src/
COPY contrib/claude-issue-solver.service /src/contrib/
COPY claude_issue_solver /src/claude_issue_solver
RUN /opt/claude-issue-solver/bin/pip install --quiet --no-deps /src \
    && rm -rf /src \
    && /opt/claude-issue-solver/bin/claude-issue-solver --version

ENV PATH=/opt/claude-issue-solver/bin:$PATH \
    STATE_DIR=/var/lib/claude-issue-solver

# Root, to use the mounted Docker socket (root-equivalent anyway); worktrees are handed to uid 1000 for
# the agent. `status` exits 0 only while the daemon runs.
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s CMD claude-issue-solver status >/dev/null || exit 1
ENTRYPOINT ["claude-issue-solver"]
CMD ["start", "--foreground"]
