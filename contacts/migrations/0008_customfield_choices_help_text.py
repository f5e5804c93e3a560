from django.db import migrations, models


class Migration(migrations.Migration):
    """The admin form takes the choices as a typed list (commas, 、, one per line) as well as a
    JSON list; only the help text changes (no SQL)."""

    dependencies = [("contacts", "0007_contact_lead_score_engagement")]

    operations = [
        migrations.AlterField(
            model_name="customfield",
            name="choices",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text=(
                    "For choice fields: the options, separated by commas or 、, or one per line "
                    '(a JSON list such as ["S", "M"] works too).'
                ),
                verbose_name="choices",
            ),
        ),
    ]
