"""The web console: a single-page app (plain ES modules, SVG, no build step) served by the API at
``/ui/``. It holds no state of its own and reads everything through the REST API with the caller's
key; see docs/console.md."""
