FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY schemas ./schemas
COPY sql ./sql
RUN pip install --no-cache-dir -e .
ENV VIGIL_CONFIG_DIR=/config
ENTRYPOINT ["vigil"]
CMD ["worker"]
