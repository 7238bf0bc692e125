"""The tenants' OpenAI-compatible API (issue 23): FastAPI, served by `lorafleet api serve`.

It calls the same services as the CLI and imports no torch, transformers or Celery. `app.py`
builds the application; `auth.py` turns a key into the caller every route scopes its queries to;
`errors.py` gives every failure OpenAI's error shape; one module per resource holds its router.
"""
