"""The REST API (FastAPI): ``mrsa.api.app.create_app``; one module per concern."""
