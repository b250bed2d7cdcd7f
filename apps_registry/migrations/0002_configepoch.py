from django.db import migrations, models


SEQUENCE = "apps_registry_config_epoch_seq"


def create_counter(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE} MINVALUE 1 START 1")
    apps.get_model("apps_registry", "ConfigEpoch").objects.get_or_create(pk=1, defaults={"value": 0})


def drop_counter(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")


class Migration(migrations.Migration):
    dependencies = [("apps_registry", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="ConfigEpoch",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("value", models.BigIntegerField(default=0)),
            ],
            options={"verbose_name": "configuration epoch"},
        ),
        migrations.RunPython(create_counter, drop_counter),
    ]
