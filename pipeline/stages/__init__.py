"""The stages of a job, each cached by content key: embed -> classify (or a head: the linear probe) -> score, and
the explain stage. Each stage module has one entry point that takes its inputs as arguments and returns arrays."""
