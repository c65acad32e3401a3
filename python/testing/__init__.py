"""Testing tools for raftcore and for people building on it."""
