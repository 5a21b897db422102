"""Where clips come from (synthetic, AudioSet, local recordings), the manifest they all write, and
the balanced subset of it that the pipeline trains and scores on."""
