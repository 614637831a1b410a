"""kalshi-data package."""
