"""Active-learning queues are kept per task: a detection run must not replace the grading
queue. Existing rows take the task of their model version (else of their job); rows that
have neither cannot be placed in a queue and are dropped (the next scoring run rebuilds it).
"""

from django.db import migrations, models


def fill_task(apps, schema_editor):
    Score = apps.get_model("registry", "ActiveLearningScore")
    for row in Score.objects.select_related("model_version", "job").filter(task__isnull=True):
        task = (row.model_version and row.model_version.task) or (row.job and row.job.task)
        if task:
            row.task = task
            row.save(update_fields=["task"])
        else:
            row.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0002_job_attempt_tracking"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="activelearningscore",
            name="one_al_score_per_study",
        ),
        migrations.AddField(
            model_name="activelearningscore",
            name="task",
            field=models.CharField(
                choices=[
                    ("nodule_detection", "Lung nodule detection (CT)"),
                    ("tumor_grading", "Tumor grading (multimodal MR)"),
                ],
                max_length=32,
                null=True,
            ),
        ),
        migrations.RunPython(fill_task, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="activelearningscore",
            name="task",
            field=models.CharField(
                choices=[
                    ("nodule_detection", "Lung nodule detection (CT)"),
                    ("tumor_grading", "Tumor grading (multimodal MR)"),
                ],
                max_length=32,
            ),
        ),
        migrations.AlterModelOptions(
            name="activelearningscore",
            options={"ordering": ["project", "task", "strategy", "rank"]},
        ),
        migrations.AddConstraint(
            model_name="activelearningscore",
            constraint=models.UniqueConstraint(
                fields=("project", "task", "strategy", "study"), name="one_al_score_per_study"
            ),
        ),
    ]
