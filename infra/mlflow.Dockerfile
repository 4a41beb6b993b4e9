# The MLflow tracking server gentrain deploys (docker-compose.yml, kuberay/mlflow.yaml), with
# sign-in on: MLflow's basic-auth app through mlflow_server.py. From the repo root:
#   docker build -f infra/mlflow.Dockerfile -t gentrain-mlflow:3.17.2 infra
# The official image lacks the PostgreSQL driver, boto3 and the auth app's Flask-WTF. Keep its
# version that of the clients' mlflow (pyproject.toml).
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary boto3 "mlflow[auth]==3.17.2"
COPY mlflow_server.py /opt/gentrain/mlflow_server.py
ENTRYPOINT ["python", "/opt/gentrain/mlflow_server.py", "--state", "/auth"]
