"""The KOC rule's settings come from the environment, like every other SCRM_ setting."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

# Prints the rule the influence computation uses, in a fresh process that reads the settings.
PROBE = (
    "import json, django; django.setup(); "
    "from segments.influence import koc_rule; print(json.dumps(koc_rule()))"
)


def _koc_rule_in_a_process(tmp_path, **variables: str) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATA_DIR": str(tmp_path),
        **variables,
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_environment_sets_the_koc_rule(tmp_path):
    rule = _koc_rule_in_a_process(
        tmp_path,
        SCRM_INFLUENCE_WINDOW_DAYS="90",
        SCRM_KOC_MIN_SCORE="7.5",
        SCRM_KOC_TOP_PERCENT="12.5",
    )

    assert rule == {"min_score": 7.5, "top_percent": 12.5, "window_days": 90}


def test_the_settings_default_to_the_documented_rule():
    # Read in this process: only meaningful when its environment (or a developer's .env, which
    # settings copy into os.environ) sets none of them.
    names = ("SCRM_INFLUENCE_WINDOW_DAYS", "SCRM_KOC_MIN_SCORE", "SCRM_KOC_TOP_PERCENT")
    if set_here := [name for name in names if name in os.environ]:
        pytest.skip(f"set in this environment: {', '.join(set_here)}")
    assert settings.SCRM_INFLUENCE_WINDOW_DAYS == 365
    assert settings.SCRM_KOC_MIN_SCORE == 20
    assert settings.SCRM_KOC_TOP_PERCENT == 5
