"""Lifecycle stages: plain functions that know nothing of Prefect (see flows/ for the wiring)."""
