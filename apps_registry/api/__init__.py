"""The JSON API under /api/v1/ for automation: bearer tokens, the admin's permissions."""
