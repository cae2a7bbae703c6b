-- A separate database for MLflow's basic-auth users and permissions.
CREATE DATABASE mlflow_auth;
