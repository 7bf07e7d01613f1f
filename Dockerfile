# imagegen: API + job runner (`imagegen serve`). Configure with environment variables
# (see README); the image holds no secrets.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
# The product only: devstack/ (the dev stack and its doubles) stays out (.dockerignore).
COPY worker ./worker
COPY api ./api
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000 \
    IMAGEGEN_MIGRATIONS_DIR=/app/sql
RUN useradd --system --uid 10001 --home /app imagegen
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY sql ./sql
USER imagegen
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/health', timeout=4)"
CMD ["imagegen", "serve"]
