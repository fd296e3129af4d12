"""The benchmark harness: latency, throughput, cold start and memory against accuracy loss, per variant."""
