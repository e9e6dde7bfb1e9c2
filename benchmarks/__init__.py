"""Speed, memory and scale benchmarks; each module prints one JSON object."""
