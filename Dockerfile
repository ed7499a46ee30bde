# One image for all four services; the command picks the service.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY rapport ./rapport
RUN pip install . && useradd --system --uid 10001 rapport
USER rapport
EXPOSE 8001 8002 8003 8004
# e.g. `docker run rapport invitation` -> uvicorn services.invitation.main:create_app
ENTRYPOINT ["sh", "-c", "exec uvicorn services.$0.main:create_app --factory --host 0.0.0.0 --port ${PORT:-8000} --no-access-log"]
CMD ["projection"]
