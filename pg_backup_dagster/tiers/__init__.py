"""The tiers of a backup and how each is made from the full dump: schema cut, per-table split."""
