"""at2po: Agentic Turn-based Policy Optimization via Tree Search."""
__version__ = "0.1.0"
