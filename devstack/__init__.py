"""The development stack (`make dev` / `imagegen dev`), kept apart from the product.

`api/` and `worker/` never import it, and the Docker image holds none of it: it is the
embedded default around the same app `imagegen serve` runs.

- `stack.py`: the whole stack (state in `.local/`, one run per checkout, the app with
  the stand-ins mounted, the ordered shutdown);
- `postgres.py`: a private PostgreSQL cluster with pg_cron (also the tests' and bench's);
- `storage.py`: a Supabase-Storage-compatible file store;
- `simulator.py`: the Replicate simulator (renders real images, calls no model);
- `tokens.py`: access tokens shaped like Supabase's, for the dev user and the tests.
"""
