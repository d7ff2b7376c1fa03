"""The local web console: live status, review and correct, classify an upload, the event log.

Started by the service when ``console.listen`` is set (``runner.py``); the only module
importing the web framework is ``app.py``. See docs/CONSOLE.md.
"""
