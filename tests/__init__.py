"""paas's tests: unit (pure logic, no processes) and integration (a real local cluster)."""
