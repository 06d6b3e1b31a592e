"""Fault injection: real processes killed, servers restarted, disks filled, S3 failing — nothing partial published."""
