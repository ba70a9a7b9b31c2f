"""The result writer: records executors' updates (status, output, history) in the database."""
