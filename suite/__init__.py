"""opbench's framework-free harness: catalog, op specs, timing, statistics, results, workers, command line."""
