from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("apps_registry", "0010_backup"),
    ]

    operations = [
        migrations.AddField(
            model_name="application",
            name="failover",
            field=models.BooleanField(
                default=False,
                help_text="Start it on another online environment when the only one it runs on has been offline "
                "longer than the failover grace period (it then runs there only).",
            ),
        ),
    ]
