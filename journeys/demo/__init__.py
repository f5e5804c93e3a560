"""Demo dataset for `manage.py seed_demo`: realistic Chinese private-domain data at any scale.

It lives in `journeys`, the top app, because it writes into every other app.
"""
