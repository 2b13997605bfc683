# visiontune on a CUDA PyTorch base: the same image runs the API, the migration and the GPU workers.
# The /ui dashboard's JavaScript comes from npm, pinned by app/ui/package-lock.json: `npm ci` in a Node stage, and
# only the one file the API serves is copied into the image (nothing is built).
FROM node:20-bookworm-slim AS ui-vendor
WORKDIR /ui
COPY app/ui/package.json app/ui/package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts

FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
# torch 2.10.0 + torchvision 0.25.0, the first pair past CVE-2026-24747 (torch.load(weights_only=True) memory
# corruption) and CVE-2025-32434; Docker Hub tag of PyTorch's release images (<torch>-cuda<cu>-cudnn9-runtime).
# CUDA 12.8 needs an NVIDIA driver >= 570 (or the CUDA forward-compatibility package on older drivers).

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VISIONTUNE_DATA_DIR=/data

RUN useradd --create-home --uid 10001 visiontune \
    && mkdir -p /data /datasets \
    && chown visiontune:visiontune /data

WORKDIR /srv/visiontune
# Dependencies in a layer of their own, from pyproject.toml alone, so a code edit does not reinstall them; the
# base image's torch and torchvision satisfy our ranges and stay.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY launcher ./launcher
COPY visiontune ./visiontune
COPY migrations ./migrations
# The dashboard's one vendored file, from the npm stage above (package-lock.json pins it); package data of app.
COPY --from=ui-vendor /ui/node_modules/chart.js/dist/chart.umd.min.js ./app/ui/node_modules/chart.js/dist/
RUN pip install --no-deps . && python -c "import app.main, worker.runner, launcher.cli, visiontune.cli"

USER visiontune
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1
CMD ["visiontune", "api", "--host", "0.0.0.0", "--port", "8000"]
