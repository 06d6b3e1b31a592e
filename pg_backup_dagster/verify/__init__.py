"""Prove a backup restores: the test restores behind the asset checks, and `verify` of a published backup."""
