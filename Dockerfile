# chronoq: one image for every service; the subcommand picks the role.
#   docker build -t chronoq .
#   docker run --rm chronoq migrate | topics | api | scanner | executor | results
# Every setting is a CHRONOQ_* environment variable (see docs/deploy.md).
#
# The image runs as a non-root user and writes nothing at run time outside /tmp, so it works
# with a read-only root file system (docker-compose.yml: read_only, a tmpfs on /tmp).

# --- build: install the project and its runtime dependencies into a venv ------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
# .dockerignore keeps this to the packaging files and the five packages (no tests, no venv).
COPY . .
# Runtime dependencies only: no [test] or [local] extras (no local broker in production).
# pip compiles the .pyc files here, once, since the running containers cannot write them.
# pip and setuptools leave the venv afterwards: nothing imports them at run time, and a
# vulnerable installer is attack surface and scanner noise.
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import common.core.migrate as m; \
assert (m.MIGRATIONS / 'env.py').is_file(), 'common/core/migrations/env.py is not in the installed package (setup.cfg package_data)'" \
 && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools

# --- runtime: the venv, a non-root user, nothing else ---------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp \
    CHRONOQ_HOME=/var/lib/chronoq

# The base image's own installer goes too (see above); the home directory is only for a run
# without CHRONOQ_DATABASE_URL (a SQLite file), which the compose deployment never does.
RUN python -m pip uninstall -y -q pip setuptools wheel \
 && groupadd --system --gid 10001 chronoq \
 && useradd --system --uid 10001 --gid chronoq --home-dir /var/lib/chronoq --create-home \
        --shell /usr/sbin/nologin chronoq

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /var/lib/chronoq
EXPOSE 8080

ENTRYPOINT ["chronoq"]
CMD ["--help"]
