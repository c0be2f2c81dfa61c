# The genq image for web and worker services.
#
# torch comes from PyTorch's own index, in the build chosen by TORCH_BACKEND:
#   cu128 (default)  CUDA 12.8: needs an NVIDIA driver >= 570 on the host (H100/H200,
#                    A100, L40S, RTX 40xx/50xx, B200)
#   cu130            CUDA 13.0: needs a driver >= 580
#   cpu              the CPU wheel, for CPU-only machines and web-only images
#   docker build --build-arg TORCH_BACKEND=cpu -t genq:cpu .
# The CUDA wheels carry the CUDA runtime, cuBLAS and cuDNN (as nvidia-* packages), so
# the base image needs no CUDA toolkit; the host needs only the driver and the NVIDIA
# Container Toolkit. PyPI's default torch for Linux is not always a CUDA build, and a
# CPU wheel in a GPU image would run every model on the CPU unnoticed: the build checks
# that the torch it installed is the one asked for. A worker pinned to a GPU checks again
# at start (worker/device.py) and exits if it cannot use the device.
FROM python:3.11-slim
ARG TORCH_BACKEND=cu128
ARG TORCH_VERSION=2.13.0
WORKDIR /app
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_BACKEND}" \
 && python -c "import sys, torch; cuda = torch.version.cuda; want = sys.argv[1]; \
print(f'torch {torch.__version__}, CUDA {cuda}'); \
sys.exit(0 if (cuda is None) == (want == 'cpu') else f'TORCH_BACKEND={want} installed torch {torch.__version__} (CUDA {cuda})')" \
    "${TORCH_BACKEND}"
COPY pyproject.toml README.md ./
COPY genq ./genq
COPY shared ./shared
COPY web ./web
COPY worker ./worker
COPY migrations ./migrations
# torch==2.13.0 in pyproject.toml is met by the build above (2.13.0+cu128): pip keeps it.
RUN pip install --no-cache-dir . \
 && python -c "import torch; print('torch kept:', torch.__version__)"
COPY models.yaml ./models.yaml
ENV PYTHONUNBUFFERED=1
