# The genq image for web and worker services. For GPUs, build on a CUDA base and
# install the CUDA build of torch 2.13.0 instead of the CPU wheel.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY genq ./genq
COPY shared ./shared
COPY web ./web
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir .
COPY models.yaml ./models.yaml
ENV PYTHONUNBUFFERED=1
