"""The scanner: dispatches due jobs from the database to the jobs topic."""
