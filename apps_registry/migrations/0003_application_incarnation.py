import uuid

from django.db import migrations, models


def fill_incarnations(apps, schema_editor):
    """One distinct incarnation per existing application (a field default is evaluated once)."""
    Application = apps.get_model("apps_registry", "Application")
    for pk in Application.objects.values_list("pk", flat=True):
        Application.objects.filter(pk=pk).update(incarnation=uuid.uuid4())


class Migration(migrations.Migration):

    dependencies = [
        ("apps_registry", "0002_configepoch"),
    ]

    operations = [
        migrations.AddField(
            model_name="application",
            name="incarnation",
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunPython(fill_incarnations, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="application",
            name="incarnation",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
    ]
