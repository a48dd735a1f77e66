"""Example tools modules. Point `THREADBOT_TOOLS` at your own."""
