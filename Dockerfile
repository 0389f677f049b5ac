# One image for the API, the workers and the migration job.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TAPEFIT_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml setup.py constraints.txt README.md alembic.ini ./
COPY service ./service
COPY worker ./worker
COPY benchmarks ./benchmarks
COPY migrations ./migrations
# The wheel carries the migrations (setup.py), so no editable install is needed; pinned to the
# versions the test suite passed with.
RUN pip install --no-cache-dir -c constraints.txt ".[postgres]"
EXPOSE 8000
CMD ["tapefit", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
