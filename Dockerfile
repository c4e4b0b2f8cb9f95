# Tailor service image. Build: docker build -t tailor .   Run: docker run -p 8000:8000 -e REDIS_URL=redis://redis:6379/0 tailor
# Not built in CI (the CI machine has no Docker engine); compose with Redis and MLflow is planned.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    OPENBLAS_NUM_THREADS=1 \
    MPLBACKEND=Agg \
    TAILOR_HOME=/data \
    TAILOR_HOST=0.0.0.0

RUN pip install --no-cache-dir uv
WORKDIR /app

# Dependencies first, for layer caching; the lock file pins everything.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project

COPY features ./features
COPY training ./training
COPY service ./service
COPY tailor_cli ./tailor_cli
RUN uv sync --locked --no-dev

VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
CMD ["/app/.venv/bin/tailor", "serve"]
