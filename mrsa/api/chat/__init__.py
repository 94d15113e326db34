"""``/v1/chat/completions``: Markovian RSA behind OpenAI's chat-completions schema, and other chat
requests passed through to the backend (see :mod:`mrsa.api`)."""
