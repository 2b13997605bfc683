# visiontune on a CUDA PyTorch base: the same image runs the API, the migration and the GPU workers.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VISIONTUNE_DATA_DIR=/data

RUN useradd --create-home --uid 10001 visiontune \
    && mkdir -p /data /datasets \
    && chown visiontune:visiontune /data

WORKDIR /srv/visiontune
# Dependencies first so code edits do not reinstall them; the base image's torch satisfies our range.
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . && python -c "import app.main, worker.runner"

USER visiontune
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1
CMD ["visiontune", "api", "--host", "0.0.0.0", "--port", "8000"]
