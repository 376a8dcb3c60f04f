# sam2pal web app. Build: docker build -t sam2pal .   Run: docker run -p 7860:7860 sam2pal
# GPU: docker run --gpus all -p 7860:7860 sam2pal (the CUDA build of torch comes with requirements.txt).
FROM python:3.11-slim

# SAM2's optional CUDA extension only fills mask holes in Meta's video predictor; skip compiling it.
ENV PYTHONUNBUFFERED=1 \
    SAM2_BUILD_CUDA=0 \
    HF_HOME=/home/user/.cache/huggingface \
    SAM2PAL_HOST=0.0.0.0 \
    SAM2PAL_PORT=7860

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 user

WORKDIR /home/user/app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=user . .
RUN pip install --no-cache-dir --no-deps .

USER user
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"
CMD ["python", "app.py"]
