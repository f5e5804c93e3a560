from django.db import migrations, models


class Migration(migrations.Migration):
    """The exact engagement part of the lead score, next to the rounded score: nullable without
    a default, so adding it changes only the catalogue on PostgreSQL (no table rewrite). Null
    means not computed yet: the contact's next award recomputes it from its awards."""

    dependencies = [("contacts", "0006_contact_merged_away")]

    operations = [
        migrations.AddField(
            model_name="contact",
            name="lead_score_engagement",
            field=models.FloatField(
                blank=True, editable=False, null=True, verbose_name="lead score engagement part"
            ),
        ),
    ]
