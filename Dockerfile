# One image for every app service of compose.yaml: web, worker, migrate, rq-dashboard.
#   docker build -t progress-service .                     # with espeak-ng (spoken narration)
#   docker build --build-arg WITH_ESPEAK=0 -t progress-service .   # smaller; silent narration
FROM python:3.11-slim

ARG WITH_ESPEAK=1
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# espeak-ng is optional: without it the video pipeline narrates a silent track.
RUN if [ "$WITH_ESPEAK" = "1" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends espeak-ng \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /src
COPY pyproject.toml README.md ./
COPY lua ./lua
COPY progress_service ./progress_service
COPY progress_cli ./progress_cli
COPY worker ./worker
COPY web ./web
# Every extra the services use: web (and rq-dashboard), worker, the video pipeline.
RUN pip install ".[web,worker,video]" && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /data/videos && chown app:app /data/videos
USER app
WORKDIR /home/app

EXPOSE 8000
CMD ["progress-service", "web", "--host", "0.0.0.0", "--port", "8000"]
