"""Load and soak test (`scripts/load`, issue 7 §3): the daemon, a reference recorder with
count-only media and a paced C load generator, each in its own process (see driver.py)."""
