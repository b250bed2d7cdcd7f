from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "worker_agent.modules.tasks"
    label = "tasks"
    verbose_name = "Tasks"
