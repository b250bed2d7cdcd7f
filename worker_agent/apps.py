from django.apps import AppConfig


class WorkerAgentConfig(AppConfig):
    name = "worker_agent"
    verbose_name = "Worker agent"
