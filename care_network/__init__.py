"""Care network: directory, pooled scheduling, referrals, medication orders, alerts (care-network issue)."""

__all__: list[str] = []
