"""The example shop: the four use cases of the background-tasks chapter, with real parts.

- ``POST /signup`` stores a user (in SQLite, or PostgreSQL) and sends a welcome email over SMTP;
- ``POST /reset-password?email=...`` emails a reset token (stored hashed);
- ``POST /import`` imports a CSV of products in the background and answers ``202 Accepted`` with the task's
  status URL (``GET /tasks/{id}``, live at ``/tasks/{id}/events``; the page ``/imports/new`` shows a progress
  bar); ``GET /imports/{id}`` lists the broken lines;
- ``POST /orders/{id}/complete`` sends a signed, retried webhook (``POST /webhooks/receiver`` verifies it);
- ``GET /products/{id}`` counts views in the background, ``GET /stats`` shows them.

Run it from the repository root with ``tachyon run examples.shop.app:app``; see docs/getting-started.md.
Every setting comes from an environment variable (``settings.py``).
"""
