"""Integrations with web frameworks, each an optional extra: `django`, `starlette` (and
`fastapi`), `flask`. Import the one you use; nothing here is imported by default.
"""
