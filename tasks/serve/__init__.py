"""`lmforge serve`: an OpenAI-compatible server with guardrails and a playground page."""
