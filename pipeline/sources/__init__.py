"""Where clips come from (synthetic, AudioSet, local recordings), and the manifest they all write."""
