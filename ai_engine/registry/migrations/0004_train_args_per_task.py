"""`ProjectAISettings.train_args` becomes {task: [argument, ...]}.

A list used to go to every task's `train`, although the two CLIs take different options.
Each stored list is copied to both tasks, so every project trains as before; the API and
the admin check each task's list from now on (`training.train_args_problem`).
"""

from django.db import migrations, models

TASKS = ("nodule_detection", "tumor_grading")


def list_to_per_task(apps, schema_editor):
    settings = apps.get_model("registry", "ProjectAISettings")
    for row in settings.objects.all():
        old = row.train_args
        row.train_args = {task: list(old) for task in TASKS} if old else {}
        row.save(update_fields=["train_args"])


def per_task_to_list(apps, schema_editor):
    settings = apps.get_model("registry", "ProjectAISettings")
    for row in settings.objects.all():
        lists = [args for args in (row.train_args or {}).values() if args]
        row.train_args = lists[0] if lists else []
        row.save(update_fields=["train_args"])


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0003_activelearningscore_task"),
    ]

    operations = [
        migrations.AlterField(
            model_name="projectaisettings",
            name="train_args",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Extra `python -m ai_engine <group> train` arguments per task, e.g. "
                '{"tumor_grading": ["--epochs", "20"]}; a task without an entry trains with the '
                "defaults. Paths (--pretrained, --init-weights) are names inside the pretrained "
                "folder.",
            ),
        ),
        migrations.RunPython(list_to_per_task, per_task_to_list),
    ]
